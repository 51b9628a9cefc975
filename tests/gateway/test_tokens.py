"""Bearer tokens: the token file, constant-time matching against every token, secrets kept out of
repr / errors / logs, and the per-token limit on concurrent generation calls (real gateway, Redis, gRPC).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging

import grpc
import pytest

from bailing.commands import gateway as command
from gateway.api import pb, pb_grpc
from gateway.config import GatewayConfig
from gateway.tokens import StreamLimit, TokenSet, bearer_token, owner_id, parse_token_file
from tests.gateway.service_calls import wait_for

BASE = {"redis_url": "redis://unused", "models": ("ling",)}


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


# ---- the pieces ----------------------------------------------------------------------------------
def test_token_file_takes_one_token_a_line_without_blanks_or_comments():
    text = "# production\n  tok-a  \n\n#tok-disabled\ntok-b\n   \n tok-c\n"
    assert parse_token_file(text) == ("tok-a", "tok-b", "tok-c")
    assert parse_token_file("# nothing\n\n") == ()


def test_token_set_compares_against_every_token(monkeypatch):
    tokens = TokenSet(["first", "second", "third", "second"])
    assert len(tokens) == 3 and all(tokens.accepts(t) for t in ("first", "second", b"third"))
    assert not tokens.accepts("fourth") and not tokens.accepts("") and not tokens.accepts("firs")
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting(a, b):
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr("gateway.tokens.hmac.compare_digest", counting)
    for token in ("first", "third", "nope"):  # a match anywhere, or none: the same work
        compared.clear()
        tokens.accepts(token)
        assert len(compared) == 3 and all(len(a) == len(b) == 32 for a, b in compared)  # digests only


def test_owner_id_is_a_hash_prefix_never_the_token():
    assert owner_id("s3cret") == hashlib.sha256(b"s3cret").digest()[:16].hex() == owner_id(b"s3cret")
    assert len(owner_id("s3cret")) == 32 and "s3cret" not in owner_id("s3cret")
    assert owner_id("a") != owner_id("b")


def test_bearer_token_reads_the_authorization_metadata():
    assert bearer_token([("x", "y"), ("authorization", "Bearer abc")]) == b"abc"
    assert bearer_token([("authorization", b"bearer abc")]) == b"abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("authorization", "Bearer")]) is None and bearer_token(None) is None


def test_stream_limit_counts_per_owner():
    limit = StreamLimit(2)
    limit.add("a", +1)
    limit.add("a", +1)
    with pytest.raises(Exception, match=r"the limit is 2 \(max_streams_per_token\)"):
        limit.check("a")
    limit.check("b")  # another owner is not affected
    limit.add("a", -1)
    limit.check("a")
    limit.add("a", -1)
    assert limit.open == {}  # nothing left behind for owners that are done
    StreamLimit(0).check("a")  # 0 = no limit


def test_tokens_stay_out_of_repr_and_errors():
    cfg = GatewayConfig(**BASE, api_token="env-secret", api_tokens=("file-secret", "env-secret"))
    assert cfg.tokens == ("env-secret", "file-secret")
    for text in (repr(cfg), str(cfg), repr(TokenSet(cfg.tokens))):
        assert "secret" not in text
    for bad in ("has space-secret", "tab\tsecret", "ünicode-secret", ""):
        with pytest.raises(ValueError, match=r"api_tokens\[1\]") as info:
            GatewayConfig(**BASE, api_tokens=("fine", bad))
        assert "secret" not in str(info.value)
    with pytest.raises(ValueError, match="max_streams_per_token needs bearer tokens"):
        GatewayConfig(**BASE, max_streams_per_token=2)
    with pytest.raises(ValueError, match="max_streams_per_token must be >= 0"):
        GatewayConfig(**BASE, api_token="t", max_streams_per_token=-1)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_parsers(parser.add_subparsers())
    return parser.parse_args(["gateway", "--models", "ling", "--redis-url", "redis://unused", *argv])


def test_gateway_flags_reach_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("BAILING_API_TOKEN", "from-env")
    path = tmp_path / "tokens.txt"
    path.write_text("# ops\nfrom-file-1\n\nfrom-file-2  # not a comment: one token a line\n")
    with pytest.raises(ValueError, match=r"api_tokens\[1\] \(token 2 of --api-token-file\)"):
        command._config(_parse("--api-token-file", str(path)))
    path.write_text("# ops\nfrom-file-1\n\nfrom-file-2\n")
    cfg = command._config(_parse("--api-token-file", str(path), "--max-streams-per-token", "3"))
    assert cfg.tokens == ("from-env", "from-file-1", "from-file-2") and cfg.max_streams_per_token == 3
    with pytest.raises(ValueError, match=r"--api-token-file: cannot read .*missing"):
        command._config(_parse("--api-token-file", str(tmp_path / "missing")))
    path.write_text("# only comments\n\n")
    with pytest.raises(ValueError, match="holds no token"):
        command._config(_parse("--api-token-file", str(path)))


# ---- on a running gateway ------------------------------------------------------------------------
def test_every_configured_token_is_accepted_and_no_token_is_logged(
    start_gateway, channel_to, fake_worker, model, caplog
):
    caplog.set_level(logging.DEBUG)
    gw = start_gateway((model,), api_token="tok-env-123", api_tokens=("tok-file-456", "tok-file-789"))
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    for token in ("tok-env-123", "tok-file-456", "tok-file-789"):
        assert stub.ListModels(pb.ListModelsRequest(), timeout=5, metadata=bearer(token)).models
    err = rpc_error(stub.ListModels, pb.ListModelsRequest(), timeout=5, metadata=bearer("tok-wrong-000"))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED and "tok-wrong" not in err.details()
    err = rpc_error(lambda: list(stub.GenerateStream(pb.GenerateRequest(model=model, prompt="x"), timeout=5)))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED  # no token at all
    call = stub.Generate.future(
        pb.GenerateRequest(model=model, prompt="hi", request_id="tok-log-1"),
        timeout=30,
        metadata=bearer("tok-file-789"),
    )
    assert worker.take_job()["request_id"] == "tok-log-1"
    worker.answer("tok-log-1")
    assert call.result(timeout=10).text == "hello world "
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "tok-log-1" in logged  # the request line was captured ...
    for secret in ("123", "456", "789", "000"):  # ... and no token, nor any part of one
        assert f"tok-env-{secret}" not in logged and f"tok-file-{secret}" not in logged
    assert "tok-wrong" not in logged


def test_per_token_limit_on_concurrent_calls(start_gateway, channel_to, fake_worker, model):
    gw = start_gateway((model,), api_tokens=("alpha", "beta"), max_streams_per_token=1)
    worker = fake_worker(model)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))

    def ask(token: str, request_id: str, timeout: float = 30) -> grpc.Future:
        request = pb.GenerateRequest(model=model, prompt="hi", request_id=request_id)
        return stub.Generate.future(request, timeout=timeout, metadata=bearer(token))

    held = ask("alpha", "lim-1")  # a unary call holds alpha's one slot ...
    assert worker.take_job()["request_id"] == "lim-1"
    request = pb.GenerateRequest(model=model, prompt="hi")
    err = rpc_error(lambda: list(stub.GenerateStream(request, timeout=5, metadata=bearer("alpha"))))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # ... so a stream of alpha's is over it
    assert "the limit is 1 (max_streams_per_token)" in err.details() and "alpha" not in err.details()
    other = ask("beta", "lim-2")  # beta has a slot of its own
    assert worker.take_job()["request_id"] == "lim-2"
    worker.answer("lim-1")
    assert held.result(timeout=10).text == "hello world "
    late = ask("alpha", "lim-3", timeout=1.5)  # the call that ended gave its slot back
    assert worker.take_job()["request_id"] == "lim-3"
    assert late.exception(timeout=10).code() is grpc.StatusCode.DEADLINE_EXCEEDED  # never answered
    attempts = iter(range(100))

    def admitted() -> grpc.Future | None:
        call = ask("alpha", f"lim-4-{next(attempts)}")
        try:
            failure = call.exception(timeout=0.5)
        except grpc.FutureTimeoutError:
            return call  # still running: admitted and queued
        assert failure.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        return None

    last = wait_for(admitted, 10, "alpha's slot after the deadline")  # an expired call gives it back
    request_id = worker.take_job()["request_id"]
    assert request_id.startswith("lim-4-")
    worker.answer(request_id)
    worker.answer("lim-2")
    assert last.result(timeout=10).text == other.result(timeout=10).text == "hello world "
