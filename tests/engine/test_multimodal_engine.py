"""Multimodal prompts on the engine (issue #8): the tiny official Ming thinker served by LLMEngine.

The golden image generation through add_request(media=...); chunked prefill through media blocks;
image / audio / text-only requests batched in the same steps give what each gives alone; n samples
fork from a media prompt; the prefix cache shares KV only for equal media; bad media are RequestErrors.
"""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

from engine.engine import EngineConfig, LLMEngine
from engine.errors import RequestError
from engine.multimodal import KeyedTokens, MediaInputs, merge_forward_args
from engine.sampling_params import SamplingParams
from tests.models.ming.ming_golden import GOLDEN, TINY, media

pytestmark = pytest.mark.skipif(not (GOLDEN / "expected.json").is_file(), reason="Ming golden data missing")


class Suppress:
    """The golden runs' logits processor: ids 998 / 999 never sampled."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        logits[self.ids] = float("-inf")
        return logits


@pytest.fixture(scope="module")
def golden():
    import json

    return json.loads((GOLDEN / "expected.json").read_text()), load_file(GOLDEN / "inputs.safetensors")


def make_engine(**config) -> LLMEngine:
    base = {"max_num_seqs": 8, "num_kv_blocks": 64, "block_size": 16}
    return LLMEngine(TINY, "cpu", torch.float32, EngineConfig(**(base | config)))


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return make_engine()


def greedy(max_tokens: int = 8, **kw) -> SamplingParams:
    return SamplingParams(
        temperature=0.0, max_tokens=max_tokens, logits_processors=[Suppress([998, 999])], **kw
    )


def request(tensors, case: str) -> tuple[list[int], MediaInputs | None]:
    ids = tensors[f"{case}.input_ids"][0].tolist()
    found = media(tensors, case)
    return ids, (MediaInputs(found) if found else None)


def run(engine: LLMEngine, reqs: list[tuple[list[int], MediaInputs | None]], params=None, **kw):
    """Add every request inside one held step (they enter the same first step), step to the end."""
    rids = []
    with engine.holding_steps():
        for i, (ids, mm) in enumerate(reqs):
            rids.append(
                engine.add_request(ids, params or greedy(), request_id=f"r{i}-{id(reqs)}", media=mm, **kw)
            )
    final, first_step = {}, None
    while len(final) < len(rids):
        outs = engine.step()
        if first_step is None:
            first_step = {o.request_id for o in outs}
        final.update({o.request_id: o for o in outs if o.finished})
    return [final[r] for r in rids], first_step


def test_the_golden_image_generation_through_the_engine(engine, golden):
    expected, tensors = golden
    (out,), _ = run(engine, [request(tensors, "image")])
    assert out.token_ids == expected["cases"]["generate_image"]["new_tokens_cached"]
    assert out.finish_reason == "length"


def test_chunked_prefill_through_media_blocks_gives_the_same_tokens(golden):
    expected, tensors = golden
    small = make_engine(max_num_batched_tokens=7)  # chunks end inside the image and audio spans
    outs, _ = run(small, [request(tensors, "image")])
    assert outs[0].token_ids == expected["cases"]["generate_image"]["new_tokens_cached"]
    alone = {case: run(make_engine(), [request(tensors, case)])[0][0].token_ids for case in ("audio",)}
    assert run(small, [request(tensors, "audio")])[0][0].token_ids == alone["audio"]


def test_text_image_and_audio_requests_in_the_same_steps_equal_their_solo_runs(golden):
    _, tensors = golden
    text_only = [5, 17, 300, 42, 99, 7, 12, 640, 3]  # a Ling-style text prompt, no media, 1-D positions
    reqs = [
        (text_only, None),
        request(tensors, "image"),
        request(tensors, "text"),
        request(tensors, "audio"),
        request(tensors, "image_windows"),
    ]
    alone = [run(make_engine(), [r])[0][0] for r in reqs]
    together, first_step = run(make_engine(), reqs)
    assert len(first_step) == len(reqs)  # every prompt was prefilled in the first step, together
    for a, b in zip(alone, together, strict=True):
        assert b.token_ids == a.token_ids
        assert b.metrics.prompt_tokens == a.metrics.prompt_tokens


def test_decode_steps_of_media_and_text_sequences_share_steps(golden):
    """Staggered arrivals: a media prompt's prefill joins steps where others decode."""
    _, tensors = golden
    eng = make_engine()
    alone = run(make_engine(), [request(tensors, "image")])[0][0].token_ids
    eng.add_request([5, 17, 300, 42], greedy(12), request_id="text")
    eng.step()
    eng.step()  # "text" is decoding now
    ids, mm = request(tensors, "image")
    eng.add_request(ids, greedy(), request_id="img", media=mm)
    final = {}
    while len(final) < 2:
        final.update({o.request_id: o for o in eng.step() if o.finished})
    assert final["img"].token_ids == alone


def test_n_samples_fork_from_a_media_prompt(engine, golden):
    expected, tensors = golden
    ids, mm = request(tensors, "image")
    (out,), _ = run(engine, [(ids, mm)], greedy(n=3))
    want = expected["cases"]["generate_image"]["new_tokens_cached"]
    assert [c.token_ids for c in out.choices] == [want] * 3


def test_the_prefix_cache_shares_kv_only_for_the_same_media(golden):
    expected, tensors = golden
    eng = make_engine()
    ids, mm = request(tensors, "image")
    first = run(eng, [(ids, mm)])[0][0]
    again = run(eng, [(ids, MediaInputs(dict(mm.tensors)))])[0][0]  # same bytes, a new request
    assert again.metrics.cached_prompt_tokens == (len(ids) - 1) // 16 * 16
    assert again.token_ids == first.token_ids == expected["cases"]["generate_image"]["new_tokens_cached"]
    other = dict(mm.tensors)
    other["pixel_values"] = other["pixel_values"].flip(0)  # same prompt ids, a different image
    changed = run(eng, [(ids, MediaInputs(other))])[0][0]
    first_media = ids.index(997)  # <imagePatch>
    assert changed.metrics.cached_prompt_tokens == first_media // 16 * 16  # the text before it only
    fresh = run(make_engine(), [(ids, MediaInputs(other))])[0][0]
    assert changed.token_ids == fresh.token_ids


def test_keyed_tokens_mark_media_positions_with_the_digest():
    ids = [1, 2, 997, 997, 3]
    keyed = KeyedTokens(ids, frozenset({2, 3}), "d")
    assert keyed[0:5] == [1, 2, (997, "d"), (997, "d"), 3]
    assert keyed[-2] == (997, "d") and len(keyed) == 5
    ids.append(9)  # a live view: generated tokens show through
    assert keyed[5] == 9 and len(keyed) == 6
    assert (
        MediaInputs({"x": torch.ones(2)}).content_digest()
        != MediaInputs({"x": torch.zeros(2)}).content_digest()
    )
    assert MediaInputs({"x": torch.ones(2)}, digest="given").content_digest() == "given"


def test_merge_keeps_plain_batches_one_dimensional():
    positions, extra = merge_forward_args([(0, 3, None), (5, 6, None)], torch.device("cpu"))
    assert positions.tolist() == [0, 1, 2, 5] and extra == {}


def test_media_errors_are_request_errors(engine, golden, golden_dir):  # golden_dir: Ling tiny
    _, tensors = golden
    ids, mm = request(tensors, "image")
    bad = dict(mm.tensors)
    bad["pixel_values"] = bad["pixel_values"][:-4]  # fewer patches than the grid says
    with pytest.raises(RequestError, match="media inputs: pixel_values"):
        engine.add_request(ids, greedy(), media=MediaInputs(bad))
    text_ids, _ = request(tensors, "text")
    with pytest.raises(RequestError, match="image tokens"):  # media the prompt has no place for
        engine.add_request(text_ids, greedy(), media=mm)
    ling = LLMEngine(golden_dir / "tiny-bailing", "cpu", torch.float32, EngineConfig(num_kv_blocks=8))
    with pytest.raises(RequestError, match="text only"):
        ling.add_request([1, 2, 3], greedy(), media=mm)
    assert not engine.has_unfinished()  # nothing was queued by the failed calls


def test_the_offline_api_takes_media_per_prompt(golden):
    from engine import LLM

    expected, tensors = golden
    llm = LLM(TINY, dtype=torch.float32, num_kv_blocks=64)
    image_ids, image = request(tensors, "image")
    text_ids, _ = request(tensors, "text")
    outs = llm.generate([image_ids, text_ids], greedy(), media=[image, None])
    assert outs[0].token_ids == expected["cases"]["generate_image"]["new_tokens_cached"]
    assert outs[1].token_ids == llm.generate([text_ids], greedy())[0].token_ids
    assert llm.generate(image_ids, greedy(), media=image)[0].token_ids == outs[0].token_ids
    with pytest.raises(RequestError, match="2 prompts but 1 media"):
        llm.generate([image_ids, text_ids], greedy(), media=[image])


def test_one_request_at_a_time_runs_the_encoders(golden):
    """Concurrent callers' encoders would only split the same cores (bench/RESULTS.md, Ming (b))."""
    import threading
    import time

    _, tensors = golden
    eng = make_engine()
    real, active, peak = eng.model.prepare_prompt, [0], [0]

    def counting(*args, **kwargs):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return real(*args, **kwargs)
        finally:
            active[0] -= 1

    eng.model.prepare_prompt = counting
    ids, mm = request(tensors, "image")
    threads = [threading.Thread(target=eng.encode_media, args=(ids, mm)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1


def test_encoders_run_off_the_callers_thread(engine, golden, monkeypatch):
    """engine.passing_thread: the encoders' torch work never leaves an OpenMP pool on a task thread."""
    _, tensors = golden
    ids, inputs = request(tensors, "image")
    threads = []
    prepare = engine.model.prepare_prompt

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return prepare(*args, **kwargs)

    monkeypatch.setattr(engine.model, "prepare_prompt", recording)
    engine.encode_media(ids, inputs)
    assert threads and threads[0] is not threading.current_thread() and not threads[0].is_alive()
