"""Ring through the whole service: real Redis, `bailing gateway` + `bailing worker --family ring`
subprocesses, real gRPC, on the demo Ring checkpoint (its template opens `<think>\\n`).

The worker runs the test-only `tests.service.long_reasoning` processor, which keeps the random model
reasoning until the closing tag is there and then forces a known answer and the end of text; so the
thinking budget is what ends the reasoning, and every count below is exact.
"""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from gateway.api import pb, pb_grpc
from tests.service.long_reasoning import ANSWER_TEXT
from tests.service.procs import Processes

pytestmark = pytest.mark.slow
PROCESSOR = "tests.service.long_reasoning:make"


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory, demo_ring, demo_ling):
    procs = Processes(redis_url, tmp_path_factory.mktemp("ring-logs"))
    try:
        ring = procs.worker(demo_ring, "ring-e2e", "--logits-processor", PROCESSOR, family="ring")
        procs.worker(demo_ling, "ling-e2e")
        address = procs.gateway("ring-e2e", "ling-e2e")
        yield address, ring
    finally:
        procs.close()


@pytest.fixture()
def stub(service):
    with grpc.insecure_channel(service[0]) as channel:
        yield pb_grpc.InferenceStub(channel)


@pytest.fixture(scope="module")
def tokenizer(demo_ring):
    from engine.tokenizer import load_tokenizer

    return load_tokenizer(demo_ring)


def ask(model="ring-e2e", budget=None, enable=None, max_tokens=64, **sampling) -> pb.GenerateRequest:
    reasoning = pb.ReasoningOptions()
    if budget is not None:
        reasoning.thinking_budget = budget
    if enable is not None:
        reasoning.enable_thinking = enable
    return pb.GenerateRequest(
        model=model,
        messages=[pb.Message(role="user", content=[pb.ContentPart(text="What is 2 + 2?")])],
        sampling=pb.SamplingParams(**{"max_tokens": max_tokens, "temperature": 0.0, **sampling}),
        reasoning=reasoning,
        request_id=uuid.uuid4().hex,
    )


def _forced_tokens(tokenizer) -> int:
    """Tokens after the reasoning: the forced `</think>\\n\\n`, the answer and the end of text."""
    close = tokenizer.encode("</think>\n\n", add_special_tokens=False)
    return len(close) + len(tokenizer.encode(ANSWER_TEXT, add_special_tokens=False)) + 1


@pytest.mark.parametrize("budget", [0, 1, 12])
def test_budget_ends_the_reasoning_with_exact_counts(stub, tokenizer, budget):
    out = stub.Generate(ask(budget=budget), timeout=120)
    assert out.usage.reasoning_tokens == budget
    assert out.text == "\n\n" + ANSWER_TEXT  # the answer follows the forced `</think>\n\n`
    assert out.finish_reason == "stop"
    assert "<" not in out.reasoning_text and (out.reasoning_text != "") == (budget > 0)
    assert out.usage.completion_tokens == budget + _forced_tokens(tokenizer)
    assert len(out.choices) == 1 and out.choices[0].reasoning_tokens == budget
    reasoning = tokenizer.decode(tokenizer.encode(out.reasoning_text, add_special_tokens=False))
    assert reasoning == out.reasoning_text


def test_streaming_sends_reasoning_then_answer_and_matches_unary(stub):
    unary = stub.Generate(ask(budget=10), timeout=120)
    chunks = list(stub.GenerateStream(ask(budget=10), timeout=120))
    kinds = [("r" if c.reasoning_text else "") + ("t" if c.text else "") for c in chunks]
    kinds = [k for k in kinds if k]
    assert kinds == sorted(kinds, key=lambda k: k != "r") and set(kinds) == {"r", "t"}
    assert "".join(c.reasoning_text for c in chunks) == unary.reasoning_text
    assert "".join(c.text for c in chunks) == unary.text
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.usage.reasoning_tokens == 10


def test_logprobs_cover_the_answer_tokens_only(stub, tokenizer):
    out = stub.Generate(ask(budget=5, logprobs=2), timeout=120)
    lps = out.choices[0].logprobs
    # the reasoning, the closing tag's tokens and the ending EOS have none; the forced answer has the
    # model's own logprobs (raw logits, not the processor's forcing)
    assert "".join(t.token for t in lps) == out.text == "\n\n" + ANSWER_TEXT
    tag = len(tokenizer.encode("</think>", add_special_tokens=False))
    assert len(lps) == out.usage.completion_tokens - 5 - tag - 1
    assert all(len(t.top) == 2 and t.logprob <= t.top[0].logprob < 0 for t in lps)
    chunks = list(stub.GenerateStream(ask(budget=5, logprobs=2), timeout=120))
    assert all(not c.logprobs for c in chunks if c.reasoning_text)
    streamed = [t for c in chunks for t in c.logprobs]
    assert [t.token_id for t in streamed] == [t.token_id for t in lps]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in lps], abs=1e-5)


def test_without_a_budget_an_unclosed_block_is_all_reasoning(stub):
    out = stub.Generate(ask(max_tokens=24), timeout=120)
    assert out.text == "" and out.reasoning_text
    assert out.finish_reason == "length"  # cut inside the reasoning: the answer never came
    assert out.usage.reasoning_tokens == out.usage.completion_tokens == 24


def test_enable_thinking_false_closes_the_block_in_the_prompt(stub):
    out = stub.Generate(ask(enable=False, max_tokens=16), timeout=120)
    assert out.reasoning_text == "" and out.text
    assert out.usage.reasoning_tokens == 0 and out.finish_reason == "length"


def test_n_samples_with_a_budget_each_reason_exactly_the_budget(stub, service):
    out = stub.Generate(ask(budget=6, n=8, temperature=1.0, seed=42), timeout=120)
    assert [c.index for c in out.choices] == list(range(8))
    assert all(c.reasoning_tokens == 6 and c.finish_reason == "stop" for c in out.choices)
    assert all(c.text == "\n\n" + ANSWER_TEXT for c in out.choices)
    assert len({c.reasoning_text for c in out.choices}) > 1  # different samples
    assert out.usage.reasoning_tokens == 48
    assert out.text == out.choices[0].text and out.reasoning_text == out.choices[0].reasoning_text
    again = stub.Generate(ask(budget=6, n=8, temperature=1.0, seed=42), timeout=120)
    assert [c.reasoning_text for c in again.choices] == [c.reasoning_text for c in out.choices]
    worker = service[1]
    deadline = time.monotonic() + 10
    while worker.metric("bailing_worker_forked_samples") < 14 and time.monotonic() < deadline:
        time.sleep(0.2)  # the metrics follow the engine once per heartbeat
    assert worker.metric("bailing_worker_forked_samples") >= 14  # 7 per request: no prefill of their own
    assert worker.metric("bailing_worker_kv_shared_blocks_peak") >= 1


def test_streaming_n_samples_tags_deltas_with_their_choice(stub):
    chunks = list(stub.GenerateStream(ask(budget=4, n=3, temperature=1.0, seed=3), timeout=120))
    unary = stub.Generate(ask(budget=4, n=3, temperature=1.0, seed=3), timeout=120)
    for i in range(3):
        assert "".join(c.reasoning_text for c in chunks if c.index == i) == unary.choices[i].reasoning_text
        assert "".join(c.text for c in chunks if c.index == i) == unary.choices[i].text
    finals = [c for c in chunks if c.finish_reason]
    assert [c.index for c in finals] == [0, 1, 2] and chunks[-1].usage.reasoning_tokens == 12


def test_ling_answers_directly_and_rejects_a_budget(stub):
    out = stub.Generate(ask(model="ling-e2e", max_tokens=6, ignore_eos=True), timeout=120)
    assert out.reasoning_text == "" and out.usage.reasoning_tokens == 0
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(ask(model="ling-e2e", budget=5), timeout=120)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "thinking_budget applies to reasoning models" in err.value.details()


@pytest.mark.parametrize(
    ("change", "field"),
    [({"n": 17}, "sampling.n"), ({"n": -1}, "sampling.n")],
)
def test_bad_n_is_invalid_argument(stub, change, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(ask(**change), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()


def test_negative_budget_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(ask(budget=-1), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "thinking_budget" in err.value.details()
