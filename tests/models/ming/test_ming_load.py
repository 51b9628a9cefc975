"""Loading the Ming thinker: config.json's architecture resolves through the registry, every key of
the golden tiny checkpoint (exact upstream names: `vision.`, `audio.`, `linear_proj`,
`linear_proj_audio`, `model.model.*` with gate / image_gate / audio_gate, `model.lm_head`) loads
strictly with its shape, and missing / unexpected / mis-shaped tensors are CheckpointErrors naming
the key; also the "ming" family and a bf16 load."""

from __future__ import annotations

import shutil

import pytest
import torch

from bailing.demo.safetensors_writer import write_safetensors_checkpoint
from engine.errors import CheckpointError
from engine.loader import load_state_dict
from engine.model_loader import load_model
from models.family import get_family
from models.ming.model import BailingMM2NativeForConditionalGeneration
from models.registry import resolve_architecture
from tests.models.ming.ming_golden import GOLDEN, TINY, media


def listed_keys() -> dict[str, tuple[int, ...]]:
    """tiny_state_dict_keys.txt: key -> shape, as the official model's state dict had them."""
    out = {}
    for line in (GOLDEN / "tiny_state_dict_keys.txt").read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            out[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


def test_the_architecture_and_family_resolve():
    assert resolve_architecture("BailingMM2NativeForConditionalGeneration") is (
        BailingMM2NativeForConditionalGeneration
    )
    family = get_family("ming")
    assert family.architectures == ("BailingMM2NativeForConditionalGeneration",)
    assert family.reasoning is None and family.modalities == ("text", "image", "audio", "video")
    assert family.processor == "models.ming.processing:MingProcessor" and family.transcribe_prompt


def test_weight_targets_are_exactly_the_official_keys(thinker):
    listed = listed_keys()
    targets = thinker.weight_targets()
    assert set(targets) == set(listed), sorted(set(targets) ^ set(listed))[:10]
    assert {k: t.shape for k, t in targets.items()} == listed
    for prefix in (
        "vision.",
        "audio.",
        "linear_proj.",
        "linear_proj_audio.",
        "model.model.",
        "model.lm_head",
    ):
        assert any(k.startswith(prefix) for k in targets), prefix
    gates = [k for k in targets if k.endswith(("gate.weight", "gate.expert_bias"))]
    assert {k.split(".")[-2] for k in gates} == {"gate", "image_gate", "audio_gate"}


def test_loaded_values_equal_the_checkpoint(thinker):
    weights = load_state_dict(TINY)
    targets = thinker.weight_targets()
    assert set(weights) == set(targets)
    for key, value in weights.items():
        assert torch.equal(targets[key].dest, value), key
    assert thinker.runtime.eos_token_ids == (735,) and thinker.runtime.vocab_size == 1024


@pytest.mark.parametrize("fault", ["missing", "unexpected", "shape"])
def test_a_bad_checkpoint_names_the_key(tmp_path, fault):
    state = load_state_dict(TINY)
    key = "model.model.layers.1.mlp.audio_gate.expert_bias"
    if fault == "missing":
        del state[key]
    elif fault == "unexpected":
        key = "audio.blocks.1.attn.key.bias"
        state[key] = torch.zeros(32)
    else:
        state[key] = torch.zeros(15)
    write_safetensors_checkpoint(tmp_path, state, dtype=torch.float32, max_shard_bytes=4_000_000)
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_model(tmp_path, torch.device("cpu"), torch.float32)


def test_a_sharded_bf16_copy_loads_and_runs(tmp_path, ming_tensors, thinker):
    """bf16 serving: encoders and LM run in bf16 (routers and the audio position table stay fp32).
    The tiny model's random routers have margins of 1e-4, so a few tokens change experts in bf16:
    compare the media rows and the mean logit error, not the worst token."""
    write_safetensors_checkpoint(
        tmp_path, load_state_dict(TINY), dtype=torch.bfloat16, max_shard_bytes=3_000_000
    )
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    model = load_model(tmp_path, torch.device("cpu"), torch.bfloat16)
    assert model.audio.positional_embedding.dtype == torch.float32  # buffer kept, cast per use
    assert model.model.model.layers[1].mlp.image_gate.weight.dtype == torch.float32  # routers stay fp32
    ids = ming_tensors["audio.input_ids"]
    with torch.inference_mode():
        low, full = (m.prepare_prompt(ids, **media(ming_tensors, "audio")) for m in (model, thinker))
        logits = model.compute_logits(model(low.ids, **low.forward_args()))
        want = thinker.compute_logits(thinker(full.ids, **full.forward_args()))
    assert logits.dtype == torch.float32 and low.media_rows.dtype == torch.bfloat16
    assert (low.media_rows.float() - full.media_rows).abs().max().item() < 2e-2
    assert (logits - want).abs().mean().item() < 0.05
