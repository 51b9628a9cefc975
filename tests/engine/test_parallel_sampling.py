"""n samples per request: one prefill whose KV blocks all samples share, per-sample seeds, group
outputs (choices), abort/finish of the whole group, and request-level logits processors."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.engine import EngineConfig, LLMEngine
from engine.errors import RequestError

PROMPT = list(range(10, 50))  # 40 tokens: 2 full blocks of 16 and a partial one of 8


def _run(engine: LLMEngine) -> dict[str, object]:
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    return final


def test_n_samples_prefill_once_and_share_the_prompt_blocks(golden_dir):
    engine = LLMEngine(golden_dir / "tiny-bailing", config=EngineConfig(block_size=16))
    params = SamplingParams(n=8, max_tokens=6, temperature=1.0, seed=7, ignore_eos=True)
    rid = engine.add_request(PROMPT, params)
    engine.step()  # the whole prompt in one step: sample 0 prefilled, then 7 samples forked from it
    m = engine.metrics
    assert m.prompt_tokens == len(PROMPT)  # the prompt's KV was computed once, not 8 times
    assert m.forked_samples == 7
    assert m.shared_kv_blocks == 2  # both full prompt blocks, each held by all 8 samples
    tables = [engine.blocks.block_table(s) for s in [rid, *(f"{rid}#{i}" for i in range(1, 8))]]
    assert all(t[:2] == tables[0][:2] for t in tables)
    assert all(engine.blocks.ref_count(b) == 8 for b in tables[0][:2])
    assert len({t[2] for t in tables}) == 8  # the partial block is each sample's own copy
    out = _run(engine)[rid]
    assert len(out.choices) == 8 and [c.index for c in out.choices] == list(range(8))
    assert all(len(c.token_ids) == 6 and c.finish_reason == "length" for c in out.choices)
    assert out.token_ids == out.choices[0].token_ids and out.finish_reason == "length"
    assert len({tuple(c.token_ids) for c in out.choices}) > 1  # different seeds, different samples
    assert m.peak_shared_kv_blocks >= 2 and m.finished_requests == 1
    assert engine.blocks.num_free_blocks() == engine.blocks.num_blocks
    engine.blocks.check_invariants()


def test_seeded_samples_are_reproducible_and_equal_seed_plus_index(golden_dir):
    llm = LLM(golden_dir / "tiny-bailing", block_size=16)
    params = SamplingParams(n=4, max_tokens=8, temperature=0.8, seed=123, ignore_eos=True)
    first = llm.generate([PROMPT], params)[0]
    again = llm.generate([PROMPT], params)[0]
    assert [c.token_ids for c in first.choices] == [c.token_ids for c in again.choices]
    singles = llm.generate(
        [PROMPT] * 4,
        [SamplingParams(max_tokens=8, temperature=0.8, seed=123 + i, ignore_eos=True) for i in range(4)],
    )
    assert [c.token_ids for c in first.choices] == [s.token_ids for s in singles]


def test_samples_without_room_to_fork_prefill_on_their_own(golden_dir):
    """7 blocks of 16: sample 0 takes 3, the fork copies need one each; the rest wait and recompute."""
    params = SamplingParams(n=4, max_tokens=4, temperature=1.0, seed=5, ignore_eos=True)
    roomy = LLM(golden_dir / "tiny-bailing", block_size=16).generate([PROMPT], params)[0]
    tight = LLM(golden_dir / "tiny-bailing", block_size=16, num_kv_blocks=4)
    out = tight.generate([PROMPT], params)[0]
    assert [c.token_ids for c in out.choices] == [c.token_ids for c in roomy.choices]
    assert tight.engine.metrics.forked_samples < 3
    assert tight.engine.blocks.num_free_blocks() == tight.engine.blocks.num_blocks


def test_group_streams_choices_and_abort_ends_every_sample(golden_dir):
    engine = LLMEngine(golden_dir / "tiny-bailing")
    engine.start()
    try:
        params = SamplingParams(n=3, max_tokens=5, temperature=1.0, seed=1, ignore_eos=True)
        outs = list(engine.stream(PROMPT, params))
        assert outs[-1].finished and not any(o.finished for o in outs[:-1])
        for i in range(3):
            deltas = [t for o in outs for t in o.choices[i].new_token_ids]
            assert deltas == outs[-1].choices[i].token_ids
        stream = engine.stream(PROMPT, SamplingParams(n=3, max_tokens=200, ignore_eos=True))
        next(stream)
        stream.close()  # aborts the request: all three samples
        assert engine.blocks.num_free_blocks() == engine.blocks.num_blocks
    finally:
        engine.shutdown()


def test_abort_before_the_fork_frees_everything(golden_dir):
    engine = LLMEngine(golden_dir / "tiny-bailing", config=EngineConfig(max_num_batched_tokens=8))
    rid = engine.add_request(PROMPT, SamplingParams(n=5, max_tokens=5))
    engine.step()  # 8 of 40 prompt tokens: no fork yet
    assert engine.metrics.forked_samples == 0
    assert engine.abort(rid) and not engine.abort(rid)
    assert engine.blocks.num_free_blocks() == engine.blocks.num_blocks
    assert not engine.has_unfinished()


def test_n_counts_against_max_num_seqs(golden_dir):
    engine = LLMEngine(golden_dir / "tiny-bailing", config=EngineConfig(max_num_seqs=4))
    with pytest.raises(RequestError, match="max_num_seqs=4"):
        engine.add_request(PROMPT, SamplingParams(n=5))
    a = engine.add_request(PROMPT, SamplingParams(n=3, max_tokens=3, ignore_eos=True))
    b = engine.add_request(PROMPT, SamplingParams(n=2, max_tokens=3, ignore_eos=True))
    engine.step()
    assert engine.metrics.num_running == 3  # b (2 samples) waits: 3 + 2 > 4
    assert set(_run(engine)) == {a, b}


def test_sample_ids_never_collide_with_request_ids(golden_dir):
    engine = LLMEngine(golden_dir / "tiny-bailing")
    engine.add_request(PROMPT, SamplingParams(n=2), request_id="x")
    with pytest.raises(RequestError, match="already in use"):
        engine.add_request(PROMPT, request_id="x#1")
    with pytest.raises(RequestError, match="n must be"):
        SamplingParams(n=0)


# ---- logits processors ------------------------------------------------------------------------
class Force:
    """Forces one token; counts its calls and clones."""

    clones = 0

    def __init__(self, token: int) -> None:
        self.token, self.calls = token, 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert len(output_ids) == self.calls - 1  # sees the sample's own outputs so far
        row = torch.full_like(logits, float("-inf"))
        row[self.token] = 0.0
        return row

    def clone(self) -> Force:
        Force.clones += 1
        return Force(self.token)


def test_logits_processor_forces_tokens_per_sample_and_logprobs_stay_raw(golden_dir):
    llm = LLM(golden_dir / "tiny-bailing")
    raw = llm.generate([PROMPT], SamplingParams(max_tokens=1, temperature=0.0, logprobs=0))[0]
    forced = 7 if raw.token_ids[0] != 7 else 8
    Force.clones = 0
    proc = Force(forced)
    params = SamplingParams(
        n=3, max_tokens=4, temperature=1.0, ignore_eos=True, logprobs=0, logits_processors=[proc]
    )
    out = llm.generate([PROMPT], params)[0]
    assert all(c.token_ids == [forced] * 4 for c in out.choices)
    assert Force.clones == 2 and proc.calls == 4  # samples 1 and 2 got their own clones
    first_lp = out.choices[0].logprobs[0][forced]
    expected = torch.log_softmax(llm.logits(PROMPT)[-1], -1)[forced].item()
    assert first_lp == pytest.approx(expected, abs=1e-4)  # the model's logprob, not the forced 0.0


def test_a_failing_logits_processor_fails_only_its_request(golden_dir):
    def boom(output_ids, logits):
        raise ValueError("bad processor")

    engine = LLMEngine(golden_dir / "tiny-bailing")
    bad = engine.add_request(PROMPT, SamplingParams(max_tokens=3, logits_processors=[boom]))
    good = engine.add_request(PROMPT, SamplingParams(max_tokens=3, ignore_eos=True))
    final = _run(engine)
    assert final[bad].finish_reason == "error" and "bad processor" in final[bad].stop_reason
    assert final[good].finish_reason == "length" and len(final[good].token_ids) == 3
    assert engine.blocks.num_free_blocks() == engine.blocks.num_blocks
    with pytest.raises(RequestError, match="logits_processors"):
        SamplingParams(logits_processors=[1])
