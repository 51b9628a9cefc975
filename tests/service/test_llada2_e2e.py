"""LLaDA2 through the whole service: real Redis, `bailing gateway` + `bailing worker --family llada2`
(and a Ling worker) subprocesses, real gRPC, on the demo LLaDA2 checkpoint (its lm_head is scaled,
so diffusion commits several tokens per forward). Checks answers, usage (forwards, tokens per
forward), streaming (one chunk per finished block, concatenation == unary), every decoder, bad
options, diffusion options sent to an autoregressive model, and a batch job on llada2."""

from __future__ import annotations

import time

import grpc
import pytest

from engine import LLM, DiffusionParams, SamplingParams
from gateway.api import pb, pb_grpc
from tests.service.procs import Processes

pytestmark = pytest.mark.slow
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory, demo_llada2, demo_ling):
    procs = Processes(redis_url, tmp_path_factory.mktemp("llada2-logs"))
    try:
        procs.worker(demo_llada2, "llada2-e2e", family="llada2")
        procs.worker(demo_ling, "ling-d2")
        yield procs.gateway("llada2-e2e", "ling-d2")
    finally:
        procs.close()


@pytest.fixture()
def channel(service):
    with grpc.insecure_channel(service) as ch:
        yield ch


def ask(model: str = "llada2-e2e", max_tokens: int = 24, **diffusion) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        model=model, prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    )
    if diffusion:
        req.diffusion.CopyFrom(pb.DiffusionOptions(**diffusion))
    return req


def test_unary_answer_matches_the_offline_engine_and_reports_forwards(channel, demo_llada2):
    out = pb_grpc.InferenceStub(channel).Generate(ask(block_length=8, threshold=0.9), timeout=120)
    u = out.usage
    assert out.finish_reason in ("stop", "length") and 0 < u.completion_tokens <= 24
    assert 0 < u.forwards < u.completion_tokens  # several tokens per forward on the confident demo
    assert u.tokens_per_forward == pytest.approx(u.completion_tokens / u.forwards)
    llm = LLM(demo_llada2)
    d = DiffusionParams(block_length=8, threshold=0.9)
    ref = llm.generate([PROMPT], SamplingParams(max_tokens=24, temperature=0.0, diffusion=d))[0]
    assert out.text == ref.text and u.forwards == ref.num_forwards


def test_stream_sends_finished_blocks_and_equals_unary(channel):
    stub = pb_grpc.InferenceStub(channel)
    req = ask(max_tokens=32, block_length=8, threshold=0.9)
    unary = stub.Generate(req, timeout=120)
    chunks = list(stub.GenerateStream(req, timeout=120))
    texts = [c.text for c in chunks if c.text]
    assert "".join(texts) == unary.text
    assert len(texts) >= 2  # block by block, not all at the end
    assert chunks[-1].usage.forwards == unary.usage.forwards


@pytest.mark.parametrize("decoder", ["llada2", "threshold", "hierarchy", "credit"])
def test_every_decoder_answers(channel, decoder):
    options = {"block_length": 8, "threshold": 0.9, "decoder": decoder}
    if decoder == "hierarchy":
        options["low_threshold"] = 0.5
    out = pb_grpc.InferenceStub(channel).Generate(ask(max_tokens=16, **options), timeout=120)
    assert out.usage.completion_tokens > 0 and out.usage.forwards > 0


def test_the_prefix_cache_changes_nothing_but_the_work(channel):
    stub = pb_grpc.InferenceStub(channel)
    on = stub.Generate(ask(block_length=8, prefix_cache=True), timeout=120)
    off = stub.Generate(ask(block_length=8, prefix_cache=False), timeout=120)
    assert (on.text, on.usage.forwards) == (off.text, off.usage.forwards)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"block_length": 0}, "diffusion.block_length"),
        ({"block_length": 5000}, "diffusion.block_length"),
        ({"steps": 0}, "diffusion.steps"),
        ({"threshold": 1.5}, "diffusion.threshold"),
        ({"threshold": float("nan")}, "diffusion.threshold"),
        ({"decoder": "magic"}, "diffusion.decoder"),
        ({"low_threshold": 0.3}, "diffusion.low_threshold"),
        ({"decoder": "hierarchy", "threshold": 0.5, "low_threshold": 0.9}, "low_threshold"),
    ],
)
def test_bad_options_are_invalid_argument_naming_the_field(channel, options, field):
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.InferenceStub(channel).Generate(ask(**options), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_diffusion_options_to_an_autoregressive_model_are_invalid_and_it_keeps_serving(channel):
    stub = pb_grpc.InferenceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(ask(model="ling-d2", block_length=8), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "diffusion" in err.value.details()
    assert stub.Generate(ask(model="ling-d2", max_tokens=4), timeout=60).usage.forwards > 0


def test_a_batch_job_runs_on_llada2_unchanged(channel):
    jobs = pb_grpc.JobsStub(channel)
    body = b"".join(
        b'{"custom_id": "d%d", "body": {"prompt": "Item %d", "sampling": {"max_tokens": 16}, '
        b'"diffusion": {"block_length": 8, "threshold": 0.9}}}\n' % (i, i)
        for i in range(3)
    )
    batch = jobs.CreateBatch(pb.CreateBatchRequest(model="llada2-e2e", jsonl=body), timeout=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = jobs.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=30)
        if got.status == pb.COMPLETED:
            break
        time.sleep(0.2)
    assert (got.status, got.counts.completed, got.counts.failed) == (pb.COMPLETED, 3, 0)
    results = list(jobs.GetBatchResults(pb.GetBatchResultsRequest(id=batch.id), timeout=60))
    assert [r.custom_id for r in results] == ["d0", "d1", "d2"]
    assert all(0 < r.response.usage.forwards < r.response.usage.completion_tokens for r in results)
    usages = [r.response.usage for r in results]
    assert got.usage.forwards == sum(u.forwards for u in usages)  # the batch's totals
    assert got.usage.completion_tokens == sum(u.completion_tokens for u in usages)
    assert got.usage.tokens_per_forward == pytest.approx(got.usage.completion_tokens / got.usage.forwards)


def test_list_models_names_the_family(channel):
    models = pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=30).models
    assert {m.name: m.family for m in models} == {"llada2-e2e": "llada2", "ling-d2": "ling"}


def test_python_client_chat_and_stream_with_diffusion_options(service):
    from bailing.client import Client

    chat = [{"role": "user", "content": "hello"}]
    options = {"decoder": "threshold", "threshold": 0.9, "block_length": 8, "steps": 8}
    with Client(service) as client:
        done = client.generate("llada2-e2e", messages=chat, max_tokens=16, temperature=0.0, diffusion=options)
        assert done.finish_reason in ("stop", "length") and done.reasoning_text == ""
        u = done.usage
        assert u.forwards > 0 and u.tokens_per_forward == pytest.approx(u.completion_tokens / u.forwards)
        with client.stream(
            "llada2-e2e", messages=chat, max_tokens=16, temperature=0.0, diffusion=options
        ) as stream:
            chunks = list(stream)
    assert "".join(c.text for c in chunks) == done.text
    assert chunks[-1].usage.forwards == done.usage.forwards


def test_autoregressive_usage_has_one_token_per_forward(channel):
    out = pb_grpc.InferenceStub(channel).Generate(ask(model="ling-d2", max_tokens=8), timeout=60)
    assert out.usage.forwards == out.usage.completion_tokens > 0 and out.usage.tokens_per_forward == 1.0


def test_the_cli_chat_example_of_the_readme(service):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "bailing.cli", "chat", "--address", service, "--model", "llada2-e2e"]
    argv += ["--decoder", "threshold", "--threshold", "0.9", "--block-length", "32", "--steps", "32"]
    argv += ["--max-tokens", "32", "hello"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tokens" in done.stderr
    bad = subprocess.run(
        [*argv[:-1], "--model", "ling-d2", "hello"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "diffusion" in bad.stderr
