"""Property test: our engine vs transformers' native Glm4Moe on many random small BailingMoeV2 configs.

Each case writes a random checkpoint through the real demo writer, loads it with `engine.LLM`, and runs
the same state dict through the Glm4Moe converter. Logits must agree to atol=rtol=1e-4 and greedy tokens
must be equal. Cases whose expert routing has a near-tie (selection margin < ROUTING_MARGIN in the
reference) are rejected: a 1e-6 numerical difference may legitimately pick another expert there.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeTopkRouter

from bailing.demo.writer import random_ling_state_dict, write_safetensors_checkpoint
from engine import LLM, SamplingParams
from models.ling.glm4moe import load_glm4moe_reference

ATOL = RTOL = 1e-4
NEW_TOKENS = 8
ROUTING_MARGIN = 1e-5  # smallest top-k / group selection gap (on biased scores) a case may have


def bailing_config(**overrides: Any) -> dict[str, Any]:
    """A tiny BailingMoeV2 config.json dict (golden-config field names); `overrides` replace fields."""
    config: dict[str, Any] = {
        "architectures": ["BailingMoeV2ForCausalLM"],
        "model_type": "bailing_moe",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "num_experts": 8,
        "num_shared_experts": 1,
        "num_experts_per_tok": 2,
        "n_group": 2,
        "topk_group": 1,
        "moe_intermediate_size": 32,
        "first_k_dense_replace": 1,
        "use_qk_norm": True,
        "use_qkv_bias": False,
        "moe_router_enable_expert_bias": True,
        "use_bias": False,
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "score_function": "sigmoid",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "num_nextn_predict_layers": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }
    config.update(overrides)
    config.setdefault("moe_shared_expert_intermediate_size", config["moe_intermediate_size"])
    return config


@st.composite
def random_case(draw: st.DrawFn) -> tuple[dict[str, Any], int, int]:
    """(config, seed, prompt length) over the shapes and routing options BailingMoeV2 allows."""
    heads = draw(st.sampled_from([1, 2, 4]))
    n_group = draw(st.integers(1, 4))
    per_group = draw(st.integers(2, 4))  # Glm4Moe scores a group by its top-2 experts
    topk_group = draw(st.integers(1, n_group))
    layers = draw(st.integers(1, 3))
    config = bailing_config(
        vocab_size=draw(st.sampled_from([128, 256, 512])),
        hidden_size=draw(st.sampled_from([32, 48, 64, 96])),
        intermediate_size=draw(st.sampled_from([32, 64])),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0])),
        head_dim=draw(st.sampled_from([8, 16, 24, 32])),
        partial_rotary_factor=draw(st.sampled_from([0.25, 0.5, 1.0])),
        rope_theta=draw(st.sampled_from([10000.0, 600000.0])),
        num_experts=n_group * per_group,
        num_experts_per_tok=draw(st.integers(1, topk_group * per_group)),
        n_group=n_group,
        topk_group=topk_group,
        num_shared_experts=draw(st.integers(0, 2)),
        moe_intermediate_size=draw(st.sampled_from([16, 32])),
        first_k_dense_replace=draw(st.integers(0, min(2, layers - 1))),  # >= 1 MoE layer
        use_qk_norm=draw(st.booleans()),
        use_qkv_bias=draw(st.booleans()),
        moe_router_enable_expert_bias=draw(st.booleans()),
        norm_topk_prob=draw(st.booleans()),
        routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
    )
    return config, draw(st.integers(0, 2**31 - 1)), draw(st.integers(1, 200))


def routing_margin(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    """Smallest gap, over tokens and MoE layers, between a chosen and a rejected group / expert."""
    inputs: list[torch.Tensor] = []
    routers = [m for m in model.modules() if isinstance(m, Glm4MoeTopkRouter)]
    hooks = [r.register_forward_hook(lambda _m, args, _out: inputs.append(args[0])) for r in routers]
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        margins = [_router_margin(r, x) for r, x in zip(routers, inputs, strict=True)]
        return min(margins, default=float("inf"))


def _top_gap(values: torch.Tensor, k: int) -> float:
    """min over rows of (k-th largest - (k+1)-th largest); inf when nothing is rejected."""
    if k >= values.shape[-1]:
        return float("inf")
    top = values.topk(k + 1, dim=-1).values  # (T, k+1)
    gap = top[:, k - 1] - top[:, k]  # (T,)
    return float(gap.nan_to_num(posinf=float("inf")).min())


def _router_margin(router: Glm4MoeTopkRouter, x: torch.Tensor) -> float:
    x = x.reshape(-1, router.hidden_dim).float()  # (T, d)
    choice = torch.nn.functional.linear(x, router.weight.float()).sigmoid() + router.e_score_correction_bias
    t, e, g = choice.shape[0], router.num_experts, router.num_group
    grouped = choice.view(t, g, e // g)  # (T, G, E/G)
    group_score = grouped.topk(2, dim=-1).values.sum(-1)  # (T, G)
    keep = group_score.topk(router.topk_group, dim=-1).indices  # (T, kg)
    mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)  # (T, G)
    eligible = choice.masked_fill(~mask[:, :, None].expand_as(grouped).reshape(t, e), float("-inf"))  # (T, E)
    return min(_top_gap(group_score, router.topk_group), _top_gap(eligible, router.top_k))


def reference_greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
    """Uncached greedy decoding with Glm4Moe: (new tokens, top-1 minus top-2 logit gap at each step)."""
    ids, gaps = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            last = model(torch.tensor([ids])).logits[0, -1].float()  # (V,)
            top = last.topk(2).values
            gaps.append(float(top[0] - top[1]))
            ids.append(int(last.argmax()))
    return ids[len(prompt) :], gaps


def assert_same_greedy(ours: list[int], ref: list[int], gaps: list[float]) -> None:
    """Equal tokens; a first divergence is tolerated only where the reference's top-2 logits tie."""
    assert len(ours) == len(ref), f"engine generated {len(ours)} tokens, expected {len(ref)}"
    for step, (a, b) in enumerate(zip(ours, ref, strict=True)):
        if a != b:
            assert gaps[step] <= ATOL, (
                f"greedy token {step}: engine {a} != Glm4Moe {b} (gap {gaps[step]:.2e})"
            )
            return


def reference_case(config: dict[str, Any], seed: int, seq_len: int) -> dict[str, Any]:
    """Random weights + prompt, and what Glm4Moe makes of them (logits, greedy tokens, routing margin)."""
    state = random_ling_state_dict(config, seed)
    reference = load_glm4moe_reference(config, state)
    prompt = torch.randint(0, config["vocab_size"], (seq_len,), generator=torch.Generator().manual_seed(seed))
    tokens, gaps = reference_greedy(reference, prompt.tolist(), NEW_TOKENS)
    with torch.no_grad():
        logits = reference(prompt[None]).logits[0].float()  # (T, V)
    margin = routing_margin(reference, torch.tensor([prompt.tolist() + tokens]))
    return {
        "state": state,
        "prompt": prompt.tolist(),
        "logits": logits,
        "tokens": tokens,
        "gaps": gaps,
        "margin": margin,
    }


def check_engine(config: dict[str, Any], case: dict[str, Any]) -> None:
    """Engine on the same checkpoint: prompt logits (atol=rtol=1e-4) and NEW_TOKENS greedy tokens."""
    with tempfile.TemporaryDirectory() as tmp:
        write_safetensors_checkpoint(tmp, case["state"], dtype=torch.float32)
        (Path(tmp) / "config.json").write_text(json.dumps(config, indent=2))
        llm = LLM(tmp, device="cpu", dtype=torch.float32)
        ours = llm.logits(case["prompt"]).float()
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
        our_tokens = list(llm.generate([case["prompt"]], params)[0].token_ids)
    assert ours.shape == case["logits"].shape
    torch.testing.assert_close(ours, case["logits"], atol=ATOL, rtol=RTOL)
    assert_same_greedy(our_tokens, case["tokens"], case["gaps"])


def check_fixed(config: dict[str, Any], seed: int, seq_len: int) -> None:
    case = reference_case(config, seed, seq_len)
    assert case["margin"] > ROUTING_MARGIN, f"routing near-tie ({case['margin']:.2e}): pick another seed"
    check_engine(config, case)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case=random_case())
def test_engine_matches_glm4moe_on_random_configs(case):
    config, seed, seq_len = case
    ref_case = reference_case(config, seed, seq_len)
    assume(ref_case["margin"] > ROUTING_MARGIN)
    check_engine(config, ref_case)


@pytest.mark.parametrize(
    "overrides, seq_len",
    [
        pytest.param(
            {"head_dim": 24, "hidden_size": 48, "num_attention_heads": 4}, 37, id="head_dim!=hidden/heads"
        ),
        pytest.param({"num_experts_per_tok": 1, "norm_topk_prob": True}, 20, id="top1-unnormalised"),
        pytest.param(
            {"n_group": 4, "topk_group": 2, "num_experts": 16, "num_experts_per_tok": 4}, 64, id="groups"
        ),
        pytest.param({"num_shared_experts": 2, "first_k_dense_replace": 0}, 9, id="two-shared-no-dense"),
        pytest.param({"num_shared_experts": 0, "partial_rotary_factor": 0.25}, 1, id="no-shared-len1"),
        pytest.param({"partial_rotary_factor": 1.0, "num_hidden_layers": 3}, 200, id="full-rope-len200"),
    ],
)
def test_engine_matches_glm4moe_fixed(overrides, seq_len):
    check_fixed(bailing_config(**overrides), seed=1234, seq_len=seq_len)


def test_engine_matches_glm4moe_yarn():
    """Yarn rope scaling beyond the original context (factor 4 over 64 positions, max 256 = 4 * 64)."""
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    check_fixed(bailing_config(rope_scaling=yarn), seed=7, seq_len=150)
