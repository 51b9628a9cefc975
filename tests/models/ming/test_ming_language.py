"""Ming's language model against the golden set (official Preview thinker): the golden encoder
outputs (`image_embeds`, `audio_embeds`) spliced at the placeholder tokens, the golden 3-row
positions, the MultiRouter by modality -> full-sequence logits within 1e-4 for the text, image,
image_windows and audio cases; and the 8 greedy tokens of the image case (ids 998/999 suppressed)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.layers.base import materialize
from models.ming.language import MingLanguageModel, ming_llm_config
from models.ming.positions import VisionTokens, decode_positions, position_ids
from tests.conftest import SHARED

GOLDEN = SHARED / "golden" / "ming-tiny"
IMAGE_PATCH, VIDEO_PATCH, AUDIO_PATCH = 997, 1015, 1008
TOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_dir():
        pytest.skip("shared Ming golden data not found")
    return json.loads((GOLDEN / "expected.json").read_text()), load_file(GOLDEN / "inputs.safetensors")


@pytest.fixture(scope="module")
def lm():
    config = json.loads((GOLDEN / "tiny-ming" / "config.json").read_text())
    model = MingLanguageModel(ming_llm_config(config["llm_config"]))
    materialize(model, torch.float32, "cpu")
    weights = load_file(GOLDEN / "tiny-ming" / "model.safetensors")
    ours = model.weight_targets()
    theirs = {k: v for k, v in weights.items() if k.startswith("model.")}
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)  # strict: nothing missing or extra
    with torch.no_grad():
        for name, target in ours.items():
            assert tuple(theirs[name].shape) == target.shape, name
            target.dest.copy_(theirs[name])
    return model.eval()


def inputs(tensors, case: str):
    ids = tensors[f"{case}.input_ids"][0]
    gate = torch.zeros_like(ids)
    embeds = None
    if f"{case}.image_embeds" in tensors:
        mask = (ids == IMAGE_PATCH) | (ids == VIDEO_PATCH)
        gate[mask] = 1
        embeds = (
            mask,
            tensors[f"{case}.image_embeds"].reshape(-1, tensors[f"{case}.image_embeds"].shape[-1]),
        )
    if f"{case}.audio_embeds" in tensors:
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for loc, length in tensors[f"{case}.audio_placeholder_loc_lens"][0].tolist():
            mask[loc : loc + length] = True
        assert bool((ids[mask] == AUDIO_PATCH).all())
        gate[mask] = 2
        n = int(tensors[f"{case}.audio_embeds_lengths"][0, 0])
        embeds = (mask, tensors[f"{case}.audio_embeds"][0, :n])
    return ids, embeds, (gate if embeds is not None else None)


@pytest.mark.parametrize("case", ["text", "image", "image_windows", "audio"])
@torch.inference_mode()
def test_logits_match_the_official_thinker(golden, lm, case):
    _, tensors = golden
    ids, embeds, gate = inputs(tensors, case)
    positions = tensors[f"{case}.position_ids"][:, 0, :]
    logits = lm.compute_logits(lm(ids, positions, None, embeds, gate))
    diff = (logits - tensors[f"{case}.logits"][0]).abs().max().item()
    assert diff <= TOL, f"{case}: max |diff| {diff:.2e}"


@torch.inference_mode()
def test_eight_greedy_tokens_of_the_image_case(golden, lm):
    """Full recompute each step (positions from the ids, generated tokens are text with the text
    gate), ids 998/999 suppressed as recorded; equal to the official cached generation."""
    exp, tensors = golden
    run = exp["cases"]["generate_image"]
    ids, embeds, _ = inputs(tensors, "image")
    tokens = VisionTokens(image_start=998, image_patch=IMAGE_PATCH, video_start=999, video_patch=VIDEO_PATCH)
    grids = tensors["image.image_grid_thw"].tolist()
    seq = ids.tolist()
    prompt_len = len(seq)
    for _ in range(len(run["new_tokens_cached"])):
        cur = torch.tensor(seq)
        positions, delta = position_ids(seq, tokens, grids)
        mask = torch.zeros(len(seq), dtype=torch.bool)
        mask[:prompt_len] = embeds[0]
        gate = torch.zeros(len(seq), dtype=torch.long)
        gate[mask] = 1
        logits = lm.compute_logits(lm(cur, positions, None, (mask, embeds[1]), gate))[-1]
        logits[run["suppress_tokens"]] = float("-inf")
        seq.append(int(logits.argmax()))
    assert seq[prompt_len:] == run["new_tokens_cached"]
    assert seq == tensors["gen.generated_ids_cached"][0].tolist()[: len(seq)]
    assert decode_positions(prompt_len, delta).shape == (3, 1)
