"""Golden check of the BailingMoeV2 -> Glm4Moe converter, independent of our engine.

The golden tiny checkpoint (../shared/golden/ling-tiny) is converted and run by transformers' native
Glm4MoeForCausalLM; its logits and greedy tokens must equal those of the official BailingMoeV2 code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.ling.glm4moe import (
    glm4moe_config_from_bailing,
    glm4moe_state_dict_from_bailing,
    load_glm4moe_reference,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
GOLDEN = SHARED / "golden" / "ling-tiny"
ATOL = RTOL = 1e-4

pytestmark = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared folder {SHARED} (golden data) is missing"
)


@pytest.fixture(scope="module")
def bailing_config() -> dict:
    return json.loads((GOLDEN / "tiny-bailing" / "config.json").read_text())


@pytest.fixture(scope="module")
def bailing_state() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "tiny-bailing" / "model.safetensors")


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "logits.safetensors")


@pytest.fixture(scope="module")
def reference(bailing_config, bailing_state):
    return load_glm4moe_reference(bailing_config, bailing_state)


def test_config_mapping(bailing_config):
    cfg = glm4moe_config_from_bailing(bailing_config)
    assert (cfg.num_hidden_layers, cfg.num_nextn_predict_layers, cfg.head_dim) == (4, 0, 16)
    assert (cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group) == (16, 4, 4, 2)
    assert cfg.n_shared_experts == 1 and cfg.norm_topk_prob and cfg.routed_scaling_factor == 2.5
    assert cfg.rope_parameters["rope_type"] == "default"
    assert int(cfg.head_dim * cfg.rope_parameters["partial_rotary_factor"]) == 8


def test_state_dict_drops_mtp_and_stacks_experts(bailing_config, bailing_state):
    converted = glm4moe_state_dict_from_bailing(bailing_state, bailing_config)
    assert not any(k.startswith("model.layers.4.") for k in converted)
    gate_up = converted["model.layers.1.mlp.experts.gate_up_proj"]  # (E, 2I, d)
    assert gate_up.shape == (16, 64, 64)
    assert torch.equal(gate_up[3, :32], bailing_state["model.layers.1.mlp.experts.3.gate_proj.weight"])
    assert torch.equal(gate_up[3, 32:], bailing_state["model.layers.1.mlp.experts.3.up_proj.weight"])
    assert torch.equal(
        converted["model.layers.2.mlp.gate.e_score_correction_bias"],
        bailing_state["model.layers.2.mlp.gate.expert_bias"],
    )


def test_unknown_key_is_named(bailing_config, bailing_state):
    state = dict(bailing_state, **{"model.layers.0.attention.rotary.bogus": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.attention\.rotary\.bogus"):
        glm4moe_state_dict_from_bailing(state, bailing_config)


@pytest.mark.parametrize("field, value", [("use_bias", True), ("score_function", "softmax")])
def test_inexpressible_config_names_field(bailing_config, field, value):
    with pytest.raises(ValueError, match=field):
        glm4moe_config_from_bailing(dict(bailing_config, **{field: value}))


@pytest.mark.parametrize("i", [0, 1, 2])
def test_logits_match_golden(reference, golden, i):
    with torch.no_grad():
        logits = reference(golden[f"input_ids_{i}"]).logits.float()
    expected = golden[f"logits_{i}"]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=RTOL)


def test_greedy_generation_matches_golden(reference, golden):
    expected_tokens = json.loads((GOLDEN / "expected.json").read_text())["generation"]["generated_ids"]
    prompt = golden["gen_prompt_ids"]
    with torch.no_grad():
        out = reference.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert out[0, prompt.shape[1] :].tolist() == expected_tokens
    assert torch.equal(out, golden["gen_sequence_ids"])


def test_shared_expert_width_maps_to_count(bailing_config):
    wide = dict(bailing_config, moe_shared_expert_intermediate_size=64, num_shared_experts=1)
    assert glm4moe_config_from_bailing(wide).n_shared_experts == 2  # 64 * 1 == 32 * 2
    odd = dict(bailing_config, moe_shared_expert_intermediate_size=48)
    with pytest.raises(ValueError, match="moe_shared_expert_intermediate_size"):
        glm4moe_config_from_bailing(odd)


@pytest.mark.parametrize("n_group", [0, 1, None])
def test_no_grouping(bailing_config, n_group):
    cfg = glm4moe_config_from_bailing(dict(bailing_config, n_group=n_group, topk_group=0))
    assert (cfg.n_group, cfg.topk_group) == (1, 1)


def test_top1_is_not_normalised(bailing_config):
    cfg = glm4moe_config_from_bailing(dict(bailing_config, num_experts_per_tok=1, norm_topk_prob=True))
    assert cfg.norm_topk_prob is False


def test_qkv_bias_is_split(bailing_config, bailing_state):
    bias = torch.arange(128, dtype=torch.float32)  # rows [Q 64 | K 32 | V 32]
    state = dict(bailing_state, **{"model.layers.0.attention.query_key_value.bias": bias})
    converted = glm4moe_state_dict_from_bailing(state, dict(bailing_config, use_qkv_bias=True))
    assert torch.equal(converted["model.layers.0.self_attn.q_proj.bias"], bias[:64])
    assert torch.equal(converted["model.layers.0.self_attn.k_proj.bias"], bias[64:96])
    assert torch.equal(converted["model.layers.0.self_attn.v_proj.bias"], bias[96:])


def test_bfloat16_keeps_router_in_float32(bailing_config, bailing_state, golden):
    model = load_glm4moe_reference(bailing_config, bailing_state, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.layers[1].mlp.gate.weight.dtype == torch.float32
    assert model.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(model(golden["input_ids_0"]).logits).all()
