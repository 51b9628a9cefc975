"""Ming's config.json parsing: the tiny golden config's three sub-configs and token ids, what the
upstream code forces or ignores (q/k norm, expert_bias, routed_scaling_factor 2.5, VideoRoPE over a
rotary dim of 64), and errors that name the bad field."""

from __future__ import annotations

import copy
import json

import pytest

from models.ming.config import MingConfig, ming_llm_config
from models.ming.positions import VisionTokens
from tests.models.ming.ming_golden import TINY


@pytest.fixture(scope="module")
def raw_config() -> dict:
    if not (TINY / "config.json").is_file():
        pytest.skip("shared Ming golden data not found")
    return json.loads((TINY / "config.json").read_text())


def test_config_parses_the_tiny_checkpoint(raw_config):
    cfg = MingConfig.from_dict(raw_config)
    assert cfg.mlp_depth == 2 and cfg.llm.hidden_size == 64 and cfg.llm.vocab_size == 1024
    assert (cfg.llm.head_dim, cfg.llm.rotary_dim, cfg.llm.eos_token_ids) == (128, 64, (735,))
    assert (cfg.vision.depth, cfg.vision.hidden_size, cfg.vision.window_size) == (2, 32, 56)
    assert cfg.vision.fullatt_block_indexes == (1,) and cfg.vision.out_hidden_size == 8192
    a = cfg.audio
    assert (a.n_mels, a.n_ctx, a.n_state, a.n_head, a.n_layer) == (128, 15000, 32, 2, 2)
    assert (a.ds_kernel_size, a.ds_stride, a.norm_query_embeds) == (3, 2, True)
    assert cfg.tokens == VisionTokens(image_start=998, image_patch=997, video_start=999, video_patch=1015)


def test_llm_flags_the_upstream_code_ignores_or_forces(raw_config):
    llm = {
        **raw_config["llm_config"],
        "use_qk_norm": False,
        "use_expert_bias": False,
        "moe_router_enable_expert_bias": False,
        "norm_topk_prob": False,
        "moe_router_topk_scaling_factor": 7.0,
    }
    del llm["routed_scaling_factor"]
    cfg = ming_llm_config(llm)
    assert cfg.use_qk_norm and cfg.expert_bias and cfg.norm_topk_prob
    assert cfg.routed_scaling_factor == 2.5  # the code's default; the topk factor is never read
    assert cfg.rope_scaling is None and cfg.num_nextn_predict_layers == 0
    assert ming_llm_config({**llm, "routed_scaling_factor": None}).routed_scaling_factor == 2.5
    assert ming_llm_config({**llm, "routed_scaling_factor": 1.5}).routed_scaling_factor == 1.5


def test_preview_token_ids_are_the_default(raw_config):
    raw = copy.deepcopy(raw_config)
    for key in ("image_start_token", "image_patch_token", "video_start_token", "video_patch_token"):
        del raw["llm_config"][key]
    assert MingConfig.from_dict(raw).tokens == VisionTokens(157158, 157157, 157159, 157175)


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("vision_config", "depth", "two", "vision_config.depth"),
        ("vision_config", "out_hidden_size", 4096, "vision_config.out_hidden_size"),
        ("vision_config", "fullatt_block_indexes", [5], "vision_config.fullatt_block_indexes"),
        ("audio_config", "ds_stride", 0, "audio_config.ds_stride"),
        ("audio_config", "whisper_encoder_config", None, "audio_config.whisper_encoder_config"),
        ("llm_config", "rope_scaling", {"type": "yarn", "factor": 2.0}, "llm_config.rope_scaling"),
        ("llm_config", "partial_rotary_factor", 1.0, "llm_config.partial_rotary_factor"),
        ("llm_config", "image_patch_token", "x", "llm_config.image_patch_token"),
        (None, "mlp_depth", 3, "mlp_depth"),
        (None, "vision_config", None, "vision_config"),
    ],
)
def test_config_rejects_bad_fields(raw_config, section, key, value, field):
    raw = copy.deepcopy(raw_config)
    (raw[section] if section else raw)[key] = value
    with pytest.raises(ValueError, match=field):
        MingConfig.from_dict(raw)


def test_config_names_a_missing_whisper_field(raw_config):
    raw = copy.deepcopy(raw_config)
    del raw["audio_config"]["whisper_encoder_config"]["n_head"]
    with pytest.raises(ValueError, match="whisper_encoder_config.n_head"):
        MingConfig.from_dict(raw)
