"""Fast paths agree with their readable twins; routing and rotary edge cases."""

from __future__ import annotations

import pytest
import torch

from engine.config import MoEConfig, RopeConfig
from engine.layers.attention import (
    BatchKVContext,
    NoCacheContext,
    SequenceKVCache,
    attention,
    attention_native,
)
from engine.layers.base import materialize
from engine.layers.moe import FusedExperts, select_experts
from engine.layers.rotary import RotaryEmbedding, rope_parameters


@pytest.mark.parametrize(("t", "past", "h", "hkv"), [(1, 0, 4, 2), (7, 0, 4, 4), (1, 9, 8, 2), (5, 11, 6, 3)])
def test_sdpa_attention_matches_native(t, past, h, hkv):
    g = torch.Generator().manual_seed(t * 100 + past)
    q = torch.randn(t, h, 16, generator=g)
    k = torch.randn(past + t, hkv, 16, generator=g)
    v = torch.randn(past + t, hkv, 16, generator=g)
    torch.testing.assert_close(
        attention(q, k, v, past), attention_native(q, k, v, past), atol=1e-5, rtol=1e-5
    )


def test_chunked_prefill_through_cache_equals_one_shot():
    """Feeding a sequence in chunks through the KV cache gives the same outputs as one causal pass."""
    g = torch.Generator().manual_seed(0)
    n, h, hkv, d = 13, 4, 2, 8
    q, k, v = (
        torch.randn(n, h, d, generator=g),
        torch.randn(n, hkv, d, generator=g),
        torch.randn(n, hkv, d, generator=g),
    )
    whole = NoCacheContext().attend(0, q, k, v)
    cache = SequenceKVCache(1, hkv, d, n, torch.float32, "cpu")
    outs = []
    for a, b in [(0, 5), (5, 6), (6, 13)]:
        ctx = BatchKVContext([cache], [b - a])
        outs.append(ctx.attend(0, q[a:b], k[a:b], v[a:b]))
        ctx.advance()
    torch.testing.assert_close(torch.cat(outs), whole, atol=1e-5, rtol=1e-5)


def test_kv_cache_overflow_is_an_error():
    cache = SequenceKVCache(1, 1, 4, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="overflow"):
        BatchKVContext([cache], [4])


def _moe(**kw) -> MoEConfig:
    base = dict(hidden_size=8, num_experts=8, top_k=2, intermediate_size=4)
    return MoEConfig(**{**base, **kw})


@pytest.mark.parametrize("tokens", [1, 3, 11, 64, 300])
@pytest.mark.parametrize(
    "cfg", [_moe(), _moe(top_k=1), _moe(num_experts=16, top_k=4, n_group=4, topk_group=2)]
)
def test_fused_experts_match_native(cfg, tokens, monkeypatch):
    torch.manual_seed(1)
    with torch.device("meta"):
        experts = FusedExperts(cfg)
    materialize(experts, torch.float32, "cpu")
    torch.nn.init.normal_(experts.w13)
    torch.nn.init.normal_(experts.w2)
    x = torch.randn(tokens, cfg.hidden_size)
    weights, ids = select_experts(
        torch.randn(tokens, cfg.num_experts), torch.randn(cfg.num_experts) * 0.1, cfg
    )
    if tokens == 64:  # perfectly balanced routing: the padded-bmm path must be taken
        ids = torch.tensor(
            [[(t * cfg.top_k + j) % cfg.num_experts for j in range(cfg.top_k)] for t in range(tokens)]
        )
    calls = []
    real = experts._padded_bmm
    monkeypatch.setattr(experts, "_padded_bmm", lambda *a: calls.append(1) or real(*a))
    torch.testing.assert_close(
        experts(x, weights, ids), experts.forward_native(x, weights, ids), atol=1e-4, rtol=1e-4
    )
    assert bool(calls) == (tokens == 64)


def test_group_limited_selection_uses_top2_group_sums_and_bias_for_choice_only():
    cfg = _moe(num_experts=8, top_k=2, n_group=4, topk_group=1, routed_scaling_factor=2.5)
    # groups: [0,1] [2,3] [4,5] [6,7]; group 1 has the best top-2 sum only thanks to the bias
    logits = torch.tensor([[2.0, -5.0, 1.0, 1.0, 0.0, 0.0, -1.0, -1.0]])
    bias = torch.tensor([0.0, 0.0, 0.3, 0.3, 0.0, 0.0, 0.0, 0.0])
    weights, ids = select_experts(logits, bias, cfg)
    assert sorted(ids[0].tolist()) == [2, 3]
    s = logits.sigmoid()[0]
    torch.testing.assert_close(weights[0], torch.stack([s[ids[0, 0]], s[ids[0, 1]]]) / (s[2] + s[3]) * 2.5)


def test_top1_is_not_renormalised_like_the_official_code():
    cfg = _moe(top_k=1, routed_scaling_factor=2.0)
    logits = torch.randn(5, 8)
    weights, ids = select_experts(logits, None, cfg)
    torch.testing.assert_close(weights[:, 0], logits.sigmoid().gather(1, ids)[:, 0] * 2.0)


def test_softmax_scoring_and_no_renormalisation():
    cfg = _moe(score_function="softmax", expert_bias=False, norm_topk_prob=False, top_k=3)
    logits = torch.randn(4, 8)
    weights, ids = select_experts(logits, None, cfg)
    torch.testing.assert_close(weights, logits.softmax(-1).gather(1, ids))


@pytest.mark.parametrize(
    "bad", [dict(n_group=3), dict(top_k=9), dict(score_function="relu"), dict(n_group=4, topk_group=5)]
)
def test_invalid_moe_config_names_the_field(bad):
    with pytest.raises(ValueError):
        _moe(**bad)


def test_partial_rotary_leaves_the_tail_untouched_and_rotates_neox_halves():
    rope = RotaryEmbedding(RopeConfig(head_dim=8, rotary_dim=4, theta=10000.0, max_position=64))
    x = torch.randn(3, 2, 8)
    cos, sin = rope.cos_sin(torch.tensor([0, 1, 5]), torch.float32)
    y = rope(x, cos, sin)
    torch.testing.assert_close(y[..., 4:], x[..., 4:])
    torch.testing.assert_close(y[0], x[0])  # position 0 is the identity
    inv = 1.0 / (10000.0 ** (torch.arange(0, 4, 2).float() / 4))
    ang = 5 * inv  # position 5
    x1, x2 = x[2, :, :2], x[2, :, 2:4]
    want = torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], dim=-1)
    torch.testing.assert_close(y[2, :, :4], want)


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
        {
            "type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 16,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
        },
        {"rope_type": "yarn", "factor": 2.0, "attention_factor": 0.9, "truncate": False},
    ],
)
def test_yarn_matches_transformers(scaling):
    from transformers import Glm4MoeConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {k: v for k, v in scaling.items() if k != "type"}
    params.setdefault("rope_type", "yarn")
    hf = Glm4MoeConfig(
        head_dim=128,
        hidden_size=256,
        num_attention_heads=4,
        max_position_embeddings=8192,
        rope_parameters={**params, "rope_theta": 600000.0, "partial_rotary_factor": 0.5},
    )
    want_inv, want_scale = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    got_inv, got_scale = rope_parameters(
        RopeConfig(head_dim=128, rotary_dim=64, theta=600000.0, max_position=8192, scaling=scaling)
    )
    torch.testing.assert_close(got_inv, want_inv.float(), atol=0, rtol=1e-6)
    assert got_scale == pytest.approx(want_scale, rel=1e-9)


def test_unknown_rope_type_is_rejected():
    with pytest.raises(ValueError, match="not supported"):
        rope_parameters(
            RopeConfig(head_dim=8, rotary_dim=8, theta=1e4, max_position=8, scaling={"type": "su"})
        )


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_grouped_gemm_matches_native_on_cuda(tokens):
    cfg = _moe(hidden_size=128, num_experts=16, top_k=4, intermediate_size=64, n_group=4, topk_group=2)
    with torch.device("meta"):
        experts = FusedExperts(cfg)
    materialize(experts, torch.bfloat16, "cuda")
    torch.nn.init.normal_(experts.w13, std=0.05)
    torch.nn.init.normal_(experts.w2, std=0.05)
    x = torch.randn(tokens, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(tokens, cfg.num_experts, device="cuda")
    weights, ids = select_experts(logits, None, cfg)
    got, want = experts(x, weights, ids).float(), experts.forward_native(x, weights, ids).float()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_fused_matches_native(dtype):
    from engine.layers.norm import RMSNorm

    norm = materialize(RMSNorm(32, eps=1e-6), dtype, "cpu")
    torch.nn.init.normal_(norm.weight, mean=1.0, std=0.1)
    x = torch.randn(5, 3, 32).to(dtype)
    torch.testing.assert_close(norm(x), norm.forward_native(x), atol=1e-6, rtol=1e-5)


def test_route_by_gate_routes_each_token_by_its_own_gate():
    """Three gates with different weights over the same 16 experts (Ming's text / image / audio):
    each token's expert choice and weights are those of its gate alone; no gate vector = gate 0."""
    from engine.layers.moe import Router, route_by_gate

    cfg = _moe(hidden_size=16, num_experts=16, top_k=4, n_group=4, topk_group=2, score_function="sigmoid",
               expert_bias=True, routed_scaling_factor=2.5)  # fmt: skip
    torch.manual_seed(0)
    routers = []
    for _ in range(3):
        r = Router(cfg)
        materialize(r, torch.float32, torch.device("cpu"))
        with torch.no_grad():
            r.weight.normal_(std=0.5)
            r.expert_bias.normal_(std=0.05)
        routers.append(r)
    x = torch.randn(12, 16)
    gate = torch.tensor([0, 1, 1, 2, 0, 2, 2, 1, 0, 0, 1, 2])
    weights, ids = route_by_gate(x, routers, gate)
    for t in range(12):
        w, i = routers[int(gate[t])](x[t : t + 1])
        assert torch.equal(ids[t], i[0]) and torch.allclose(weights[t], w[0], atol=1e-6)
    per_gate = [r(x)[1] for r in routers]
    assert not torch.equal(per_gate[0], per_gate[1]) and not torch.equal(per_gate[1], per_gate[2])
    _, i0 = route_by_gate(x, routers, None)
    assert torch.equal(i0, per_gate[0]) and torch.equal(
        route_by_gate(x, routers, torch.zeros(12, dtype=torch.long))[1], i0
    )
