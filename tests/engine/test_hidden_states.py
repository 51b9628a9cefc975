"""Prefill-only requests that return hidden states (issue: Ming image generation): rows equal a plain
full forward (Ling golden tiny, Ming tiny thinker with an image), alone or batched with text requests,
chunked, preempted or behind a prefix-cache hit; no logits are computed for them; the prefix cache is
capped before the first hidden position; bad requests are RequestErrors; LLM.hidden_states."""

from __future__ import annotations

import queue

import pytest
import torch
from safetensors.torch import load_file

from engine import LLM, RequestError, SamplingParams
from engine.block_manager import BlockManager
from engine.engine import EngineConfig, LLMEngine
from engine.hidden_states import HiddenCapture
from engine.multimodal import MediaInputs
from engine.sequence import Sequence
from tests.models.llada2_golden import CHECKPOINT, require_golden
from tests.models.ming.ming_golden import GOLDEN, IMAGE_PATCH, TINY, media

ATOL = 1e-5
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
PROMPT = [(7 * i + 3) % 500 + 1 for i in range(50)]  # 50 token ids of the Ling tiny's 512


@pytest.fixture(scope="module")
def ling(golden_dir):
    return golden_dir / "tiny-bailing"


def ling_engine(ling, **config) -> LLMEngine:
    base = {"max_num_seqs": 8, "num_kv_blocks": 64, "block_size": 16}
    return LLMEngine(ling, "cpu", torch.float32, EngineConfig(**(base | config)))


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@torch.inference_mode()
def full_forward(engine: LLMEngine, ids: list[int]) -> torch.Tensor:
    """The model's hidden rows [L, d] of one plain forward: no paged cache, no chunks."""
    return engine.model(torch.tensor(ids), torch.arange(len(ids)), None).clone()


def run(engine: LLMEngine, requests: list[dict]) -> tuple[list, list[set[str]]]:
    """Add every request (add_request keywords) in one held step; step to the end.

    Returns the final outputs in order and, per step, the ids of the requests that output something.
    """
    rids = []
    with engine.holding_steps():
        for i, kw in enumerate(requests):
            rids.append(engine.add_request(request_id=f"r{i}-{id(requests)}", **kw))
    final, steps = {}, []
    while len(final) < len(rids):
        outs = engine.step()
        steps.append({o.request_id for o in outs})
        final.update({o.request_id: o for o in outs if o.finished})
    return [final[r] for r in rids], steps


def hidden_rows(engine: LLMEngine, ids: list[int], positions: list[int], **kw) -> torch.Tensor:
    (out,), _ = run(engine, [dict(prompt=ids, hidden_positions=positions, **kw)])
    return out.hidden_states


def count_logits_rows(engine: LLMEngine) -> list[int]:
    """Wrap the model's lm_head call: the number of rows of every call lands in the returned list."""
    calls, real = [], engine.model.compute_logits

    def counting(hidden):
        calls.append(hidden.shape[0])
        return real(hidden)

    engine.model.compute_logits = counting
    return calls


def test_rows_equal_a_full_forward_and_no_logits_are_computed(ling):
    eng = ling_engine(ling)
    calls = count_logits_rows(eng)
    positions = [0, 17, 5, 49, 31]  # unsorted: rows come back in this order
    (out,), steps = run(eng, [dict(prompt=PROMPT, hidden_positions=positions)])
    want = full_forward(eng, PROMPT)[positions]
    rows = out.hidden_states
    assert rows.shape == (5, want.shape[1]) and rows.dtype == torch.float32
    assert rows.device == eng.device and not rows.requires_grad and not rows.is_inference()
    close(rows, want)
    assert out.finish_reason == "stop" and out.token_ids == [] and out.text == ""
    assert len(steps) == 1 and calls == []  # one prefill step, no lm_head at all
    assert eng.blocks.num_free_blocks() == eng.blocks.num_blocks and not eng.has_unfinished()


def test_batched_with_text_requests_everyone_gets_what_they_get_alone(ling):
    positions = [2, 20, 40]
    texts = [[5, 17, 300, 42, 99, 7], list(range(30, 61)), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    alone_rows = hidden_rows(ling_engine(ling), PROMPT, positions)
    alone_tokens = [run(ling_engine(ling), [dict(prompt=t, params=GREEDY)])[0][0].token_ids for t in texts]
    eng = ling_engine(ling)
    calls = count_logits_rows(eng)
    reqs = [dict(prompt=t, params=GREEDY) for t in texts[:2]]
    reqs += [dict(prompt=PROMPT, hidden_positions=positions), dict(prompt=texts[2], params=GREEDY)]
    outs, steps = run(eng, reqs)
    assert len(steps[0]) == 4  # every prompt was computed in the first step, together
    assert calls[0] == 3  # logits for the three text requests only
    close(outs[2].hidden_states, alone_rows)
    assert [o.token_ids for o in (outs[0], outs[1], outs[3])] == alone_tokens
    assert all(o.hidden_states is None for o in (outs[0], outs[1], outs[3]))


def test_chunked_prefill_collects_rows_from_every_chunk(ling):
    positions = [3, 10, 24, 49, 11]  # in chunks 0, 1, 3, 7 (7 tokens per step)
    eng = ling_engine(ling, max_num_batched_tokens=7)
    (out,), steps = run(eng, [dict(prompt=PROMPT, hidden_positions=positions)])
    assert len(steps) == 8  # ceil(50 / 7) chunks, one output at the end
    whole = hidden_rows(ling_engine(ling), PROMPT, positions)
    close(out.hidden_states, whole)
    close(out.hidden_states, full_forward(eng, PROMPT)[positions])


def test_the_prefix_cache_is_capped_before_the_first_hidden_position(ling):
    eng = ling_engine(ling, block_size=4)
    want = full_forward(eng, PROMPT)
    positions = [30, 35, 49]
    first, _ = run(eng, [dict(prompt=PROMPT, hidden_positions=positions)])
    again, _ = run(eng, [dict(prompt=PROMPT, hidden_positions=positions)])  # hits the cache
    assert first[0].metrics.cached_prompt_tokens == 0
    assert again[0].metrics.cached_prompt_tokens == 28  # the 7 blocks before position 30
    for out in (first[0], again[0]):
        close(out.hidden_states, want[positions])
    # A generated request caches (50 - 1) // 4 = 12 blocks; a later hidden row inside them is recomputed.
    gen, _ = run(eng, [dict(prompt=PROMPT, params=GREEDY)])
    assert gen[0].metrics.cached_prompt_tokens == 48  # the hidden requests committed their blocks
    late, _ = run(eng, [dict(prompt=PROMPT, hidden_positions=[47, 0])])
    assert late[0].metrics.cached_prompt_tokens == 0  # position 0 is wanted: nothing reused
    tail, _ = run(eng, [dict(prompt=PROMPT, hidden_positions=[47])])
    assert tail[0].metrics.cached_prompt_tokens == 44
    close(late[0].hidden_states, want[[47, 0]])
    close(tail[0].hidden_states, want[[47]])


def test_isolated_rows_are_bit_identical_whatever_runs_beside_them(ling):
    """Reproducible rows: the same isolated request alone, after a cache-filling run of its own
    prompt, beside text requests and chunked prompts, and beside another isolated request, gives
    exactly the same bits (a shared forward only matches to ~1e-6)."""
    positions = [2, 20, 40, 49]
    eng = ling_engine(ling, block_size=4, max_num_batched_tokens=20)
    isolated = dict(prompt=PROMPT, hidden_positions=positions, isolated=True)
    (alone,), steps = run(eng, [isolated])
    assert len(steps) == 3  # fixed chunks of max_num_batched_tokens: 20 + 20 + 10
    (again,), _ = run(eng, [isolated])
    assert again.metrics.cached_prompt_tokens == 0  # never reuses the prefix cache
    texts = [dict(prompt=list(range(30, 61)), params=GREEDY), dict(prompt=[5, 17, 300], params=GREEDY)]
    beside, _ = run(eng, [texts[0], isolated, texts[1], {**isolated, "hidden_positions": [49]}])
    for out in (again, beside[1]):
        assert torch.equal(out.hidden_states, alone.hidden_states)
    assert torch.equal(beside[3].hidden_states, alone.hidden_states[3:])
    close(alone.hidden_states, full_forward(eng, PROMPT)[positions])
    solo = [run(ling_engine(ling), [t])[0][0].token_ids for t in texts]
    assert [beside[0].token_ids, beside[2].token_ids] == solo


def test_isolated_needs_a_prefill_only_request(ling):
    with pytest.raises(RequestError, match="isolated applies to prefill-only requests"):
        ling_engine(ling).add_request(PROMPT, GREEDY, isolated=True)


def test_the_block_manager_reuses_only_blocks_before_compute_from():
    blocks = BlockManager(16, 4)
    tokens = list(range(20))
    blocks.allocate("a", tokens)
    assert blocks.ensure_slots("a", 20)
    blocks.commit("a", tokens, 20)
    blocks.free("a")
    for compute_from, reused in ((None, 16), (19, 16), (9, 8), (8, 8), (7, 4), (0, 0)):
        assert blocks.allocate("b", tokens, compute_from) == reused
        blocks.free("b")
    with pytest.raises(ValueError, match="compute_from=20"):
        blocks.allocate("b", tokens, 20)
    seq = Sequence("s", tokens, SamplingParams())
    assert seq.compute_from == 19
    seq.hidden = HiddenCapture((12, 5, 18))
    assert seq.compute_from == 5


def test_a_preempted_hidden_request_recomputes_its_rows(ling):
    # 6 blocks of 4: the decoding request (8 + 12 tokens) and the hidden one (16) cannot both fit.
    eng = ling_engine(ling, block_size=4, num_kv_blocks=6, max_num_batched_tokens=3)
    ids = PROMPT[:16]
    long_gen = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    alone = run(ling_engine(ling), [dict(prompt=PROMPT[20:28], params=long_gen)])[0][0].token_ids
    with eng.holding_steps():
        eng.add_request(PROMPT[20:28], long_gen, request_id="gen")
        eng.add_request(ids, request_id="hid", hidden_positions=[9, 14, 2])
    seq = eng._seqs["hid"].seq
    final = {}
    while len(final) < 2:
        final.update({o.request_id: o for o in eng.step() if o.finished})
    assert seq.num_preemptions >= 1
    want = full_forward(eng, ids)[[9, 14, 2]]
    close(final["hid"].hidden_states, want)
    assert final["gen"].token_ids == alone
    assert eng.blocks.num_free_blocks() == eng.blocks.num_blocks


def test_max_tokens_does_not_count_for_a_hidden_request(ling):
    eng = ling_engine(ling, num_kv_blocks=4)  # 64 slots: the 50-token prompt, not 50 + 100
    big = SamplingParams(max_tokens=100)
    with pytest.raises(RequestError, match="max_tokens"):
        eng.add_request(PROMPT, big)
    (out,), _ = run(eng, [dict(prompt=PROMPT, params=big, hidden_positions=[49])])
    close(out.hidden_states, full_forward(eng, PROMPT)[[49]])
    small = ling_engine(ling, num_kv_blocks=3)  # 48 slots: the prompt itself does not fit
    with pytest.raises(RequestError, match=r"prompt \(50 tokens\) needs 50 KV slots, but the cache holds 48"):
        small.add_request(PROMPT, hidden_positions=[49])


def test_output_queues_get_the_final_output_and_abort_frees_it(ling):
    eng = ling_engine(ling, max_num_batched_tokens=8)
    q = queue.SimpleQueue()
    eng.add_request(PROMPT, request_id="a", output_queue=q, hidden_positions=[1, 40])
    eng.add_request(PROMPT, request_id="b", output_queue=q, hidden_positions=[45])
    eng.step()
    assert q.empty()  # prefill in progress: nothing to say yet
    assert eng.abort("b")
    aborted = q.get_nowait()
    assert aborted.request_id == "b" and aborted.finish_reason == "abort" and aborted.hidden_states is None
    while eng.has_unfinished():
        eng.step()
    done = q.get_nowait()
    assert done.request_id == "a" and done.finish_reason == "stop" and q.empty()
    close(done.hidden_states, full_forward(eng, PROMPT)[[1, 40]])
    assert eng.blocks.num_free_blocks() == eng.blocks.num_blocks


@pytest.mark.parametrize(
    "positions, kw, message",
    [
        ([], {}, "empty"),
        ([3, 50], {}, r"position 50 is outside the prompt's positions \[0, 50\)"),
        ([-1], {}, "position -1 is outside"),
        ([4, 9, 4], {}, r"duplicates: \[4\]"),
        ([1.5], {}, "must hold ints"),
        ([True], {}, "must hold ints"),
        ("12", {}, "must be a list of ints"),
        ([3], {"params": SamplingParams(n=2)}, "n=1"),
        ([3], {"params": SamplingParams(logprobs=2)}, "no logprobs"),
        ([3], {"params": SamplingParams(logits_processors=[lambda ids, x: x])}, "logits"),
    ],
)
def test_bad_hidden_requests_are_request_errors(ling, positions, kw, message):
    eng = ling_engine(ling)
    with pytest.raises(RequestError, match=message):
        eng.add_request(PROMPT, hidden_positions=positions, **kw)
    assert not eng.has_unfinished()


def test_a_diffusion_model_takes_no_hidden_request():
    require_golden()
    eng = LLMEngine(CHECKPOINT, "cpu", torch.float32, EngineConfig(num_kv_blocks=8, block_size=4))
    with pytest.raises(RequestError, match="diffusion model"):
        eng.add_request([1, 2, 3], hidden_positions=[1])


def test_the_offline_api(ling):
    llm = LLM(ling, dtype=torch.float32, num_kv_blocks=64, max_num_batched_tokens=16)
    other = PROMPT[::-1][:30]
    rows = llm.hidden_states([PROMPT, other], [[49, 0], [29, 3, 12]])
    close(rows[0], full_forward(llm.engine, PROMPT)[[49, 0]])
    close(rows[1], full_forward(llm.engine, other)[[29, 3, 12]])
    (single,) = llm.hidden_states(other, [29, 3, 12])  # one prompt, one position list
    close(single, rows[1])
    with pytest.raises(RequestError, match="2 prompts but 1 position lists"):
        llm.hidden_states([PROMPT, other], [[1]])
    with pytest.raises(RequestError, match="duplicates"):
        llm.hidden_states(PROMPT, [1, 1])
    assert not llm.engine.has_unfinished()


# ---- the tiny Ming thinker: media prompts ----------------------------------------------------------


@pytest.fixture(scope="module")
def ming():
    if not (GOLDEN / "expected.json").is_file():
        pytest.skip("Ming golden data missing")
    tensors = load_file(GOLDEN / "inputs.safetensors")
    ids = tensors["image.input_ids"][0].tolist()
    return TINY, ids, MediaInputs(media(tensors, "image")), tensors["text.input_ids"][0].tolist()


def ming_engine(path, **config) -> LLMEngine:
    base = {"max_num_seqs": 8, "num_kv_blocks": 64, "block_size": 16}
    return LLMEngine(path, "cpu", torch.float32, EngineConfig(**(base | config)))


@torch.inference_mode()
def ming_full_forward(engine: LLMEngine, ids: list[int], mm: MediaInputs) -> torch.Tensor:
    """The thinker's hidden rows [L, d] of one plain forward (no KV cache) over the media prompt."""
    prompt = engine.model.prepare_prompt(torch.tensor(ids), **dict(mm.tensors))
    return engine.model(prompt.ids, **prompt.forward_args(0, len(ids))).clone()


def ming_positions(ids: list[int]) -> list[int]:
    """Before, inside (first, middle, last patch) and after the image span, and the last token."""
    patches = [i for i, t in enumerate(ids) if t == IMAGE_PATCH]
    first, last = patches[0], patches[-1]
    return [first - 1, first, patches[len(patches) // 2], last, last + 1, len(ids) - 1]


@pytest.mark.parametrize("chunk", [2048, 7], ids=["whole", "chunked"])  # 7: chunks end inside the image
def test_ming_rows_with_an_image_equal_a_full_forward(ming, chunk):
    path, ids, mm, text_ids = ming
    eng = ming_engine(path, max_num_batched_tokens=chunk)
    calls = count_logits_rows(eng)
    positions = ming_positions(ids)
    (out, text), _ = run(
        eng, [dict(prompt=ids, media=mm, hidden_positions=positions), dict(prompt=text_ids, params=GREEDY)]
    )
    want = ming_full_forward(eng, ids, mm)[positions]
    close(out.hidden_states, want)
    assert sum(calls) == len(text.token_ids)  # lm_head rows: the text request's tokens only
    alone = run(ming_engine(path), [dict(prompt=text_ids, params=GREEDY)])[0][0]
    assert text.token_ids == alone.token_ids


def test_ming_offline_api_with_media_per_prompt(ming):
    path, ids, mm, text_ids = ming
    llm = LLM(path, dtype=torch.float32, num_kv_blocks=64)
    positions = ming_positions(ids)
    image_rows, text_rows = llm.hidden_states([ids, text_ids], [positions, [0, 4]], media=[mm, None])
    close(image_rows, ming_full_forward(llm.engine, ids, mm)[positions])
    close(text_rows, full_forward(llm.engine, text_ids)[[0, 4]])
    (again,) = llm.hidden_states(ids, positions, media=mm)  # now with a prefix-cache hit: same rows
    close(again, image_rows)
