"""Ming 2.0's ViT (`MingVision3`, transformers' Qwen3-VL-MoE vision model) against the upstream
code's own output (`ming2_vit_golden.safetensors`, written by make_ming2_vit_golden.py from
upstream's qwen3_moe_vit.py on the same weights): the merged features within 1e-5 with sdpa and its
eager twin, the deepstack mergers' outputs too when asked for; skipping the deepstack mergers (the
thinker's default) changes nothing; the upstream parameter names load strictly; config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeVisionModel

from models.ming.config import MingVision3Config
from models.ming.vision3 import MingVision3, hf_vision3_config

GOLDEN = Path(__file__).with_name("ming2_vit_golden.safetensors")
TOL = 1e-5


@pytest.fixture(scope="module")
def golden() -> tuple[MingVision3Config, dict[str, torch.Tensor]]:
    with safe_open(str(GOLDEN), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    return MingVision3Config.from_dict({**config, "model_type": "qwen3_moe_vit"}), tensors


def load(cfg: MingVision3Config, tensors: dict[str, torch.Tensor], **kwargs) -> MingVision3:
    model = MingVision3(cfg, **kwargs).eval()
    weights = {k.removeprefix("weight."): v.float() for k, v in tensors.items() if k.startswith("weight.")}
    model.load_state_dict(weights, strict=True)  # upstream's parameter names, every one
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_merged_features_equal_the_upstream_vit(golden, attn):
    cfg, t = golden
    model = load(cfg, t, attn_implementation=attn)
    assert model.config._attn_implementation == attn
    with torch.inference_mode():
        ours = model.features(t["pixel_values"].float(), t["grid_thw"])
    assert ours.shape == t["merged"].shape == (6, cfg.out_hidden_size)
    diff = (ours - t["merged"]).abs().max().item()
    print(f"merged ({attn}): max |diff| {diff:.3e}")
    assert diff < TOL


def test_deepstack_mergers_load_where_upstream_runs_them(golden):
    """Run on request, merger j after block deepstack_visual_indexes[j] gives upstream's output j."""
    cfg, t = golden
    model = load(cfg, t, deepstack=True)
    with torch.inference_mode():
        out = model(t["pixel_values"].float(), grid_thw=t["grid_thw"])
    assert len(out.deepstack_features) == len(cfg.deepstack_visual_indexes) == 2
    for j, feature in enumerate(out.deepstack_features):
        assert (feature - t[f"deepstack.{j}"]).abs().max().item() < TOL, j
    assert (out.pooler_output - t["merged"]).abs().max().item() < TOL


def test_skipping_the_deepstack_mergers_equals_transformers_which_runs_them(golden):
    cfg, t = golden
    ours = load(cfg, t)
    plain = Qwen3VLMoeVisionModel(hf_vision3_config(cfg)).eval()
    plain.load_state_dict(ours.state_dict(), strict=True)
    assert len(ours.deepstack_merger_list) == 2 and ours.deepstack_visual_indexes == []
    with torch.inference_mode():
        theirs = plain(t["pixel_values"].float(), grid_thw=t["grid_thw"])
        mine = ours(t["pixel_values"].float(), grid_thw=t["grid_thw"])
    assert len(theirs.deepstack_features) == 2 and mine.deepstack_features == []
    assert torch.equal(mine.pooler_output, theirs.pooler_output)


def test_a_bf16_tower_stays_close(golden):
    cfg, t = golden
    model = load(cfg, t).to(torch.bfloat16)
    with torch.inference_mode():
        ours = model.features(t["pixel_values"].float(), t["grid_thw"])
    assert ours.dtype == torch.bfloat16
    assert (ours.float() - t["merged"]).abs().max().item() < 0.1 * t["merged"].abs().max().item()


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("hidden_size", 18, "vision_config.hidden_size"),  # heads of 9: not a multiple of 4
        ("num_position_embeddings", 60, "vision_config.num_position_embeddings"),
        ("deepstack_visual_indexes", [0, 3], "vision_config.deepstack_visual_indexes"),
        ("deepstack_visual_indexes", [1, 1], "vision_config.deepstack_visual_indexes"),
        ("deepstack_visual_indexes", "8", "vision_config.deepstack_visual_indexes"),
        ("patch_size", 0, "vision_config.patch_size"),
        ("depth", "three", "vision_config.depth"),
    ],
)
def test_bad_2_0_vision_fields_are_named(golden, key, value, field):
    cfg, _ = golden
    raw = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
    raw["deepstack_visual_indexes"] = list(cfg.deepstack_visual_indexes)
    with pytest.raises(ValueError, match=field):
        MingVision3Config.from_dict({**raw, key: value})


def test_absent_fields_take_the_upstream_defaults():
    cfg = MingVision3Config.from_dict({"model_type": "qwen3_moe_vit"})
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == (27, 1152, 16, 4304)
    assert (cfg.patch_size, cfg.num_position_embeddings, cfg.hidden_act) == (16, 2304, "gelu_pytorch_tanh")
    assert cfg.deepstack_visual_indexes == (8, 16, 24) and cfg.out_hidden_size == 3584
