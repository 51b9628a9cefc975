"""The whole thinker against the golden set (official Preview thinker), from the processor's tensors:
`prepare_prompt` (encoders, splice, 3-row positions, rope delta, MultiRouter gate) -> full-sequence
logits within 1e-4 for text, image, image_windows and audio; a chunked prefill over a KV cache; the
8-token greedy generation (ids 998/999 suppressed, as recorded) decoded with the cache at
1-D positions + rope delta, and re-prefilled without it, equal to the recorded ones."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from engine.layers.attention import BatchKVContext, SequenceKVCache
from tests.models.ming.ming_golden import AUDIO_PATCH, CASES, IMAGE_PATCH, TOL, media


def prompt_of(thinker, tensors, case):
    return thinker.prepare_prompt(tensors[f"{case}.input_ids"], **media(tensors, case))


def new_cache(thinker, capacity: int) -> SequenceKVCache:
    rt = thinker.runtime
    return SequenceKVCache(rt.num_layers, rt.num_kv_heads, rt.head_dim, capacity, torch.float32, "cpu")


def cached_forward(thinker, cache, ids, args):
    ctx = BatchKVContext([cache], [len(ids)])
    hidden = thinker(ids, ctx=ctx, **args)
    ctx.advance()
    return thinker.compute_logits(hidden)


@pytest.mark.parametrize("case", CASES)
@torch.inference_mode()
def test_prompt_positions_media_rows_and_gate(ming_expected, ming_tensors, thinker, case):
    prompt = prompt_of(thinker, ming_tensors, case)
    assert torch.equal(prompt.positions, ming_tensors[f"{case}.position_ids"][:, 0, :])
    assert (
        prompt.rope_delta
        == int(ming_tensors[f"{case}.rope_deltas"])
        == ming_expected["cases"][case]["rope_delta"]
    )
    if case == "text":
        assert prompt.media_mask is None and prompt.gate is None
        return
    kind, patch, gate_id = ("audio", AUDIO_PATCH, 2) if case == "audio" else ("image", IMAGE_PATCH, 1)
    assert torch.equal(prompt.media_mask, prompt.ids == patch)
    assert torch.equal(prompt.gate, (prompt.ids == patch).long() * gate_id)
    recorded = ming_tensors[f"{case}.{kind}_embeds"].reshape(-1, 64)[: int(prompt.media_mask.sum())]
    assert (prompt.media_rows - recorded).abs().max().item() < TOL


@pytest.mark.parametrize("case", CASES)
@torch.inference_mode()
def test_logits_from_the_processor_tensors(ming_tensors, thinker, case):
    prompt = prompt_of(thinker, ming_tensors, case)
    logits = thinker.compute_logits(thinker(prompt.ids, **prompt.forward_args()))  # no cache, causal
    diff = (logits - ming_tensors[f"{case}.logits"][0]).abs().max().item()
    print(f"{case}: max |diff| {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("case", ["image_windows", "audio"])
@torch.inference_mode()
def test_a_chunked_prefill_over_the_cache_equals_one_pass(ming_tensors, thinker, case):
    prompt = prompt_of(thinker, ming_tensors, case)
    cache, length = new_cache(thinker, 64), len(prompt.ids)
    cuts = [0, 14, 15, 30, length]  # chunk borders inside the media block
    rows = [
        cached_forward(thinker, cache, prompt.ids[a:b], prompt.forward_args(a, b)) for a, b in pairwise(cuts)
    ]
    diff = (torch.cat(rows) - ming_tensors[f"{case}.logits"][0]).abs().max().item()
    assert diff <= TOL, f"{case}: chunked max |diff| {diff:.2e}"


def greedy(logits: torch.Tensor, suppress: list[int]) -> int:
    logits = logits.clone()
    logits[suppress] = float("-inf")
    return int(logits.argmax())


@torch.inference_mode()
def test_greedy_generation_with_the_cache(ming_expected, ming_tensors, thinker):
    run = ming_expected["cases"]["generate_image"]
    prompt = prompt_of(thinker, ming_tensors, "image")
    length, steps = len(prompt.ids), len(run["new_tokens_cached"])
    cache = new_cache(thinker, length + steps)
    step_logits = [cached_forward(thinker, cache, prompt.ids, prompt.forward_args())[-1]]
    seq = [*prompt.ids.tolist(), greedy(step_logits[-1], run["suppress_tokens"])]
    while len(seq) < length + steps:
        n = cache.length
        positions = torch.tensor([prompt.decode_position(n)])  # 1-D: cache index + rope delta
        step_logits.append(
            cached_forward(thinker, cache, torch.tensor(seq[-1:]), {"positions": positions})[0]
        )
        seq.append(greedy(step_logits[-1], run["suppress_tokens"]))
    assert seq[length:] == run["new_tokens_cached"]
    assert seq == ming_tensors["gen.generated_ids_cached"][0].tolist()
    diff = (torch.stack(step_logits) - ming_tensors["gen.step_logits_uncached"]).abs().max().item()
    print(f"generation: step logits max |diff| {diff:.2e}")
    assert diff <= TOL
    # A re-prefill of prompt + generated tokens (as after preemption) gives the same step logits.
    full = torch.tensor(seq[:-1])
    again = thinker.compute_logits(thinker(full, **prompt.forward_args(0, len(full))))[length - 1 :]
    assert (again - ming_tensors["gen.step_logits_uncached"]).abs().max().item() <= TOL
    assert torch.equal(
        prompt.forward_args(length + 2, length + 3)["positions"], torch.full((3, 1), length + 2 - 3)
    )


@torch.inference_mode()
def test_a_text_prompt_is_a_plain_text_lm_call(ming_tensors, thinker):
    prompt = prompt_of(thinker, ming_tensors, "text")
    args = prompt.forward_args(3, 9)
    assert args["embeds"] is None and args["gate"] is None and prompt.rope_delta == 0
    plain = thinker(prompt.ids, torch.arange(len(prompt.ids)), None)  # what the engine passes today
    assert torch.equal(plain, thinker(prompt.ids, **prompt.forward_args()))


def test_media_that_do_not_fit_the_prompt_are_errors(ming_tensors, thinker):
    ids = ming_tensors["image.input_ids"]
    image = media(ming_tensors, "image")
    with pytest.raises(ValueError, match="3 image tokens but 4 image embeddings"):
        thinker.prepare_prompt(ids[:, [*range(14), *range(15, 27)]], **image)
    audio = media(ming_tensors, "audio")
    with pytest.raises(ValueError, match="do not fit a prompt of 40 tokens"):
        thinker.prepare_prompt(ming_tensors["audio.input_ids"][:, :40], **audio)
    with pytest.raises(ValueError, match="audio_placeholder_loc_lens"):
        thinker.prepare_prompt(ming_tensors["audio.input_ids"], audio_feats=audio["audio_feats"])
    with pytest.raises(ValueError, match="empty or negative"):
        thinker.prepare_prompt(ids, **image).forward_args(5, 4)


@torch.inference_mode()
def test_image_video_and_audio_in_one_prompt(ming_tensors, thinker):
    """Rows land at their own placeholders in token order; the Preview's video gets 1-D positions
    (its video_start id never precedes <framePatch>) but its frames still use image_gate."""
    image, audio = media(ming_tensors, "image"), media(ming_tensors, "audio")
    video = torch.randn(32, 1176, generator=torch.Generator().manual_seed(0))  # grid (2, 4, 4): 8 tokens
    ids = [5, 998, *[IMAGE_PATCH] * 4, 999, 1000, *[1015] * 8, 1001, 1009, *[AUDIO_PATCH] * 38, 1010, 6]
    loc = ids.index(AUDIO_PATCH)
    prompt = thinker.prepare_prompt(
        torch.tensor([ids]),
        **image,
        pixel_values_videos=video,
        video_grid_thw=torch.tensor([[2, 4, 4]]),
        audio_feats=audio["audio_feats"],
        audio_feats_lengths=audio["audio_feats_lengths"],
        audio_placeholder_loc_lens=torch.tensor([[[loc, 38]]]),
    )
    rows = torch.cat([
        thinker.encode_images(image["pixel_values"], image["image_grid_thw"]),
        thinker.encode_images(video, torch.tensor([[2, 4, 4]])),
        thinker.encode_audio(audio["audio_feats"], audio["audio_feats_lengths"]),
    ])  # fmt: skip
    assert torch.equal(prompt.media_rows, rows)
    want_gate = [1 if i in (IMAGE_PATCH, 1015) else 2 if i == AUDIO_PATCH else 0 for i in ids]
    assert prompt.gate.tolist() == want_gate
    pos = prompt.positions
    assert pos[:, 2:6].tolist() == [[2, 2, 2, 2], [2, 2, 3, 3], [2, 3, 2, 3]]  # the 2x2 image
    frames = slice(ids.index(1015), ids.index(1001))
    assert (pos[:, frames] == pos[0, frames]).all() and pos[0, frames].tolist() == list(range(5, 13))
    assert prompt.rope_delta == -3  # the 4 image tokens share one t
    whole = thinker.compute_logits(thinker(prompt.ids, **prompt.forward_args()))
    cache = new_cache(thinker, len(ids))
    cuts = [0, 4, 11, 30, len(ids)]  # inside the image, the video and the audio
    parts = [
        cached_forward(thinker, cache, prompt.ids[a:b], prompt.forward_args(a, b)) for a, b in pairwise(cuts)
    ]
    assert (torch.cat(parts) - whole).abs().max().item() < TOL
