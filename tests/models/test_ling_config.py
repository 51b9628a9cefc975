"""config.json variants in the wild: the keys vLLM honours and the HF code ignores."""

from __future__ import annotations

import json

import pytest
import torch

from bailing.demo.writer import REMOVE, LingDemoSpec, write_ling_checkpoint
from engine import LLM
from models.ling.config import BailingMoeV2Config


@pytest.fixture(scope="module")
def base(golden_dir) -> dict:
    return json.loads((golden_dir / "tiny-bailing" / "config.json").read_text())


def cfg(base: dict, **changes) -> BailingMoeV2Config:
    d = {**base, **changes}
    return BailingMoeV2Config.from_dict({k: v for k, v in d.items() if v is not REMOVE})


def test_rotary_dim_rules(base):
    assert cfg(base).rotary_dim == 8  # head_dim 16 x partial factor 0.5
    assert cfg(base, partial_rotary_factor=REMOVE, rotary_dim=4).rotary_dim == 4  # Ling-1T style
    assert cfg(base, partial_rotary_factor=REMOVE).rotary_dim == 16  # official: full RoPE
    assert cfg(base, partial_rotary_factor=0.25, rotary_dim=4).rotary_dim == 4


def test_missing_keys_take_the_official_defaults(base):
    c = cfg(
        base, num_key_value_heads=REMOVE, head_dim=REMOVE, rope_theta=REMOVE, max_position_embeddings=REMOVE
    )
    assert (c.num_key_value_heads, c.head_dim, c.rope_theta, c.max_position_embeddings) == (
        4,
        128,
        600000.0,
        32768,
    )
    c = cfg(base, n_group=REMOVE, topk_group=REMOVE)
    assert (c.n_group, c.topk_group) == (8, 4)


def test_head_dim_defaults_to_hidden_over_heads(base):
    assert cfg(base, head_dim=0).head_dim == 16
    assert cfg(base, head_dim=None).head_dim == 16
    assert cfg(base, head_dim=24).head_dim == 24


def test_routing_keys_are_honoured(base):
    moe = cfg(
        base, score_function="softmax", norm_topk_prob=False, moe_router_enable_expert_bias=False
    ).moe_config()
    assert (moe.score_function, moe.norm_topk_prob, moe.expert_bias) == ("softmax", False, False)
    default = cfg(base, score_function=REMOVE, norm_topk_prob=REMOVE).moe_config()
    assert (default.score_function, default.norm_topk_prob, default.expert_bias) == ("sigmoid", True, True)
    assert not cfg(base, n_group=0, topk_group=0).moe_config().grouped
    assert not cfg(base, n_group=1).moe_config().grouped


def test_shared_expert_width(base):
    assert cfg(base).shared_expert_intermediate_size == 32
    assert (
        cfg(
            base, moe_shared_expert_intermediate_size=48, num_shared_experts=2
        ).shared_expert_intermediate_size
        == 96
    )
    assert (
        cfg(
            base, moe_shared_expert_intermediate_size=REMOVE, num_shared_experts=2
        ).shared_expert_intermediate_size
        == 64
    )
    assert cfg(base, num_shared_experts=None).shared_expert_intermediate_size is None
    assert cfg(base, num_shared_experts=0).shared_expert_intermediate_size == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
        ({"first_k_dense_replace": 9}, "first_k_dense_replace"),
        ({"rope_scaling": "yarn"}, "rope_scaling"),
        ({"num_experts_per_tok": 17}, "num_experts_per_tok"),
        ({"score_function": "relu"}, "score_function"),
        ({"vocab_size": "many"}, "vocab_size"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_bad_values_name_the_field(base, change, field):
    with pytest.raises(ValueError, match=field):
        cfg(base, **change)


SMALL = LingDemoSpec(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_experts=8,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    moe_intermediate_size=16,
)


@pytest.mark.parametrize(
    "overrides",
    [
        {"partial_rotary_factor": REMOVE, "rotary_dim": 8},
        {"moe_shared_expert_intermediate_size": 24},
        {"moe_router_enable_expert_bias": False, "score_function": "softmax"},
        {"num_shared_experts": None},
        {"n_group": 0, "topk_group": 0},
        {"norm_topk_prob": False},
        {"tie_word_embeddings": True},
        {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}},
    ],
)
def test_config_variants_load_and_run(tmp_path, overrides):
    folder = write_ling_checkpoint(tmp_path / "v", SMALL, config_overrides=overrides, with_tokenizer=False)
    llm = LLM(folder)
    logits = llm.logits([1, 2, 3, 4])
    assert logits.shape == (4, llm.model.runtime.vocab_size) and torch.isfinite(logits).all()
