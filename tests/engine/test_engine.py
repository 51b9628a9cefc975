"""LLMEngine end to end on the golden tiny model: paging/batching/chunking/preemption never change
greedy outputs; abort frees blocks; streaming; prefix sharing; metrics; concurrent use."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from engine import LLM, SamplingParams
from engine.engine import EngineConfig, LLMEngine

GREEDY = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_file(golden_dir / "logits.safetensors")


@pytest.fixture(scope="module")
def prompts(golden):
    return [golden["gen_prompt_ids"][0].tolist()] + [golden[f"input_ids_{i}"][0].tolist() for i in range(3)]


@pytest.fixture(scope="module")
def reference(golden_dir, prompts):
    """Greedy continuations, one prompt at a time, roomy cache."""
    llm = LLM(golden_dir / "tiny-bailing")
    return [llm.generate([p], GREEDY)[0].token_ids for p in prompts]


@pytest.mark.parametrize(
    "config",
    [
        dict(block_size=1),
        dict(block_size=16),
        dict(max_num_batched_tokens=7),  # prompts are prefilled in chunks, mixed with decodes
        dict(max_num_seqs=1),
        dict(num_kv_blocks=10, block_size=8),  # 80 slots for 8 requests of up to 67 tokens: preemption
        dict(enable_prefix_caching=False),
    ],
)
def test_engine_configs_never_change_greedy_outputs(golden_dir, golden, prompts, reference, config):
    llm = LLM(golden_dir / "tiny-bailing", **config)
    outs = llm.generate(prompts * 2, GREEDY)  # duplicates also exercise prefix sharing
    assert [o.token_ids for o in outs] == reference * 2
    assert outs[0].token_ids == golden["gen_sequence_ids"][0, 16:].tolist()
    assert llm.engine.blocks.num_free_blocks() == llm.engine.blocks.num_blocks
    if "num_kv_blocks" in config:
        assert llm.engine.metrics.num_preemptions > 0


def test_abort_frees_blocks_immediately(golden_copy):
    engine = LLMEngine(golden_copy)
    rid = engine.add_request(list(range(1, 60)), SamplingParams(max_tokens=50, ignore_eos=True))
    other = engine.add_request(list(range(3, 30)), SamplingParams(max_tokens=50, ignore_eos=True))
    for _ in range(3):
        engine.step()
    used = engine.blocks.num_blocks - engine.blocks.num_free_blocks()
    assert used > 0
    assert engine.abort(rid)
    assert engine.blocks.num_blocks - engine.blocks.num_free_blocks() < used
    assert not engine.abort(rid)
    assert engine.abort(other)
    assert engine.blocks.num_free_blocks() == engine.blocks.num_blocks
    assert not engine.has_unfinished()


def test_prefix_sharing_shows_in_metrics(golden_copy):
    engine = LLMEngine(golden_copy, config=EngineConfig(block_size=4))
    system = list(range(10, 50))  # a 40-token shared "system prompt"
    a = engine.add_request([*system, 1, 2], SamplingParams(max_tokens=3, ignore_eos=True))
    engine.step()  # a's prompt computed and committed
    b = engine.add_request([*system, 3, 4], SamplingParams(max_tokens=3, ignore_eos=True))
    engine.step()
    m = engine.metrics.snapshot()
    assert m["prefix_cache_hit_tokens"] >= 40 and m["shared_kv_blocks"] >= 10
    assert m["prompt_tokens"] == 42 + 2  # b computed only what the cache did not hold
    table_a, table_b = engine.blocks.block_table(a), engine.blocks.block_table(b)
    assert table_a[:10] == table_b[:10]
    while engine.has_unfinished():
        engine.step()
    assert engine.blocks.num_free_blocks() == engine.blocks.num_blocks


def test_stream_yields_deltas_and_closing_aborts(golden_copy):
    engine = LLMEngine(golden_copy)
    engine.start()
    try:
        chunks = list(engine.stream([5, 6, 7], SamplingParams(max_tokens=6, ignore_eos=True)))
        assert [len(c.new_token_ids) for c in chunks] == [1] * 6
        assert chunks[-1].finished and chunks[-1].token_ids == [t for c in chunks for t in c.new_token_ids]
        it = engine.stream([5, 6, 7], SamplingParams(max_tokens=500, ignore_eos=True), request_id="early")
        next(it)
        it.close()  # consumer went away: the request is aborted and its blocks freed
        assert "early" not in engine._requests
        assert engine.blocks.num_free_blocks() == engine.blocks.num_blocks
    finally:
        engine.shutdown()


def test_final_only_requests_send_one_output_and_the_same_tokens(golden_copy, reference, prompts):
    """A final_only request (a batch item) puts nothing on its queue until it finishes, then its final
    output, with the tokens a streamed request gets; streamed requests sharing the queue still get
    one output per step."""
    import queue

    engine = LLMEngine(golden_copy)
    shared: queue.SimpleQueue = queue.SimpleQueue()
    engine.add_request(prompts[0], GREEDY, request_id="quiet", output_queue=shared, final_only=True)
    engine.add_request(prompts[1], GREEDY, request_id="loud", output_queue=shared)
    while engine.has_unfinished():
        engine.step()
    got: list = []
    while not shared.empty():
        got.append(shared.get())
    quiet = [o for o in got if o.request_id == "quiet"]
    loud = [o for o in got if o.request_id == "loud"]
    assert len(quiet) == 1 and quiet[0].finished and quiet[0].token_ids == reference[0]
    assert len(loud) == GREEDY.max_tokens and loud[-1].token_ids == reference[1]


def test_concurrent_clients_on_the_loop_thread(golden_copy, reference, prompts):
    engine = LLMEngine(golden_copy)
    engine.start()
    results: dict[int, list[int]] = {}

    def client(i: int) -> None:
        *_, last = engine.stream(prompts[i % 4], GREEDY)
        results[i] = last.token_ids

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        engine.shutdown()
    assert {i: results[i] for i in range(8)} == {i: reference[i % 4] for i in range(8)}
    m = engine.metrics.snapshot()
    assert m["finished_requests"] == 8 and m["mean_ttft_s"] > 0 and m["mean_itl_s"] > 0
    assert m["generation_tokens"] == 8 * 20


def test_request_larger_than_the_whole_cache_is_rejected(golden_copy):
    from engine import RequestError

    engine = LLMEngine(golden_copy, config=EngineConfig(num_kv_blocks=4, block_size=4))
    with pytest.raises(RequestError, match="needs 18 KV slots, but the cache holds 16"):
        engine.add_request(list(range(1, 9)), SamplingParams(max_tokens=10))
    engine.add_request(list(range(1, 9)), SamplingParams(max_tokens=8, ignore_eos=True))  # exactly fits
    while engine.has_unfinished():
        engine.step()
    assert engine.blocks.num_free_blocks() == 4


def test_duplicate_request_id_and_bad_prompt(golden_copy):
    from engine import RequestError

    engine = LLMEngine(golden_copy)
    engine.add_request([1, 2], request_id="x")
    with pytest.raises(RequestError, match="already in use"):
        engine.add_request([1, 2], request_id="x")
    with pytest.raises(RequestError):
        engine.add_request([10**9])
    assert engine.has_unfinished()


def test_priority_runs_first_when_seats_are_scarce(golden_copy):
    engine = LLMEngine(golden_copy, config=EngineConfig(max_num_seqs=1))
    low = engine.add_request([1, 2, 3], SamplingParams(max_tokens=2, ignore_eos=True), priority=5)
    high = engine.add_request([1, 2, 4], SamplingParams(max_tokens=2, ignore_eos=True), priority=0)
    finished = []
    while engine.has_unfinished():
        finished += [o.request_id for o in engine.step() if o.finished]
    assert finished == [high, low]


def test_logprobs_through_the_engine(golden_copy):
    llm = LLM(golden_copy)
    out = llm.generate(
        [[5, 6, 7]], SamplingParams(max_tokens=3, temperature=0.0, logprobs=2, ignore_eos=True)
    )[0]
    assert len(out.logprobs) == 3
    full = torch.log_softmax(llm.logits([5, 6, 7, *out.token_ids[:2]]), -1)
    for i, (tok, lp) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        assert tok in lp and len(lp) >= 2
        assert lp[tok] == pytest.approx(full[2 + i, tok].item(), abs=1e-4)


def test_llm_generate_ignores_other_requests_finishing(golden_copy):
    llm = LLM(golden_copy)
    other = llm.engine.add_request([9, 9, 9], SamplingParams(max_tokens=1, ignore_eos=True))
    outs = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, ignore_eos=True))
    assert len(outs) == 1 and len(outs[0].token_ids) == 4 and outs[0].request_id != other


def test_abort_from_another_thread_lands_within_one_step(golden_copy):
    """The loop lets a queued caller take the lock before its next step (no starving abort)."""
    engine = LLMEngine(golden_copy)
    engine.start()
    try:
        params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
        streams = [engine.stream(list(range(3 + i, 40)), params) for i in range(8)]
        for stream in streams:
            next(stream)
        lags = []
        for _ in range(20):  # each locked call waits out at most the step already running
            before = engine.metrics.steps
            other = engine.add_request(list(range(5, 30)), params)
            lags.append(engine.metrics.steps - before)
            before = engine.metrics.steps
            assert engine.abort(other)
            lags.append(engine.metrics.steps - before)
        # 1: the step that was running; 2 only if this thread was not scheduled before the loop
        # passed its gate once (a loaded machine). Starvation shows as many more.
        assert sorted(lags)[len(lags) // 2] <= 1 and max(lags) <= 2, lags
        for stream in streams:
            stream.close()
    finally:
        engine.shutdown()


def test_cached_prompt_tokens_reported_per_request(golden_copy):
    engine = LLMEngine(golden_copy, config=EngineConfig(block_size=4))
    prompt, params = list(range(3, 40)), SamplingParams(max_tokens=2, temperature=0.0)
    engine.add_request(prompt, params, request_id="first")
    first = _run_to_end(engine)["first"]
    engine.add_request(prompt, params, request_id="again")
    again = _run_to_end(engine)["again"]
    assert first.metrics.cached_prompt_tokens == 0
    assert again.metrics.cached_prompt_tokens == 36  # the full blocks of the 37-token prompt


def _run_to_end(engine: LLMEngine) -> dict:
    final = {}
    while engine.has_unfinished():
        final.update({o.request_id: o for o in engine.step() if o.finished})
    return final


def test_holding_steps_admits_a_batch_into_one_step(golden_copy):
    engine = LLMEngine(golden_copy)
    engine.start()
    try:
        params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
        with engine.holding_steps():
            before = engine.metrics.steps
            ids = [engine.add_request(list(range(3 + i, 20)), params) for i in range(8)]
            assert engine.metrics.steps == before  # no step ran while the batch was added
        while engine.has_unfinished():
            time.sleep(0.01)
        assert engine.metrics.max_batch_seqs == len(ids)
    finally:
        engine.shutdown()
