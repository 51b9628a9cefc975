"""Ming's language model against the golden set (official Preview thinker), fed the RECORDED encoder
outputs (`image_embeds`, `audio_embeds`) at the placeholder tokens and the recorded 3-row positions:
full-sequence logits within 1e-4 for text, image, image_windows and audio. And the MultiRouter on the
tiny model: image / audio tokens take the expert choice of `image_gate` / `audio_gate`, text tokens
that of `gate`, and dropping the gate vector changes the logits."""

from __future__ import annotations

import pytest
import torch

from models.ming.language import AUDIO_GATE, IMAGE_GATE, MingMoE
from tests.models.ming.ming_golden import AUDIO_PATCH, CASES, IMAGE_PATCH, TOL, VIDEO_PATCH


def recorded_inputs(tensors, case: str):
    """ids [L], embeds (mask, rows) from the recorded encoder outputs, gate [L] (None: text only)."""
    ids = tensors[f"{case}.input_ids"][0]
    gate = torch.zeros_like(ids)
    embeds = None
    if f"{case}.image_embeds" in tensors:
        mask = (ids == IMAGE_PATCH) | (ids == VIDEO_PATCH)
        gate[mask] = IMAGE_GATE
        embeds = (mask, tensors[f"{case}.image_embeds"])
    if f"{case}.audio_embeds" in tensors:
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for loc, length in tensors[f"{case}.audio_placeholder_loc_lens"][0].tolist():
            mask[loc : loc + length] = True
        assert bool((ids[mask] == AUDIO_PATCH).all())
        gate[mask] = AUDIO_GATE
        n = int(tensors[f"{case}.audio_embeds_lengths"][0, 0])
        embeds = (mask, tensors[f"{case}.audio_embeds"][0, :n])
    return ids, embeds, (gate if embeds is not None else None)


@pytest.mark.parametrize("case", CASES)
@torch.inference_mode()
def test_logits_from_the_recorded_embeddings(ming_tensors, thinker, case):
    ids, embeds, gate = recorded_inputs(ming_tensors, case)
    positions = ming_tensors[f"{case}.position_ids"][:, 0, :]  # (3, L)
    logits = thinker.compute_logits(thinker(ids, positions, None, embeds=embeds, gate=gate))
    diff = (logits - ming_tensors[f"{case}.logits"][0]).abs().max().item()
    print(f"{case}: max |diff| {diff:.2e}")
    assert diff <= TOL, f"{case}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("case", ["image_windows", "audio"])
@torch.inference_mode()
def test_media_tokens_are_routed_by_their_gate(ming_tensors, thinker, case):
    ids, embeds, gate = recorded_inputs(ming_tensors, case)
    positions = ming_tensors[f"{case}.position_ids"][:, 0, :]
    seen: dict[int, tuple] = {}  # MoE layer -> the experts' (x [L, d], weights [L, K], ids [L, K])
    moes = [m for m in thinker.model.modules() if isinstance(m, MingMoE)]
    hooks = [
        m.experts.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, args))
        for i, m in enumerate(moes)
    ]
    try:
        with_gate = thinker.compute_logits(thinker(ids, positions, embeds=embeds, gate=gate))
    finally:
        for h in hooks:
            h.remove()
    media = gate > 0
    differs = 0
    for i, moe in enumerate(moes):
        x, _, used = seen[i]
        own = [r(x)[1] for r in (moe.gate, moe.image_gate, moe.audio_gate)]  # (L, K) per gate
        want = torch.stack([own[int(g)][t] for t, g in enumerate(gate)])  # (L, K)
        assert torch.equal(used, want), f"layer {i}: a token was not routed by its own gate"
        other = (want[media].sort(-1).values != own[0][media].sort(-1).values).any(-1)
        differs += int(other.sum())
    assert differs > 0  # the media gates pick other experts than the text gate for some tokens
    without = thinker.compute_logits(thinker(ids, positions, embeds=embeds, gate=None))
    assert (with_gate - ming_tensors[f"{case}.logits"][0]).abs().max().item() <= TOL
    assert (without - ming_tensors[f"{case}.logits"][0]).abs().max().item() > 1e-2
