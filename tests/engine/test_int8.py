"""Int8 weight-only quantization (engine.int8): the per-row rounding bound, each product form against
the dequantised reference, the MoE forms, and a whole model: its logits stay close to float32's and
its compiled decode step gives its own eager logits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from engine import LLM, SamplingParams
from engine.config import MoEConfig
from engine.decode_graph import DecodeGraph
from engine.engine_config import EngineConfig
from engine.int8 import dequantize_rows, int8_linear, int8_linear_native, quantize_model, quantize_rows
from engine.layers.base import Linear, materialize
from engine.layers.matvec import use_reduction
from engine.layers.moe import FusedExperts
from engine.model_loader import load_model
from tests.engine.decode_cases import prefilled


def test_rounding_is_within_half_a_step_per_row():
    w = torch.randn(3, 40, 64) * torch.rand(3, 40, 1) * 5
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (3, 40) and scale.dtype == torch.float32
    assert q.abs().max() <= 127 and (q.abs().amax(-1) == 127).all()  # every row uses its full range
    err = (dequantize_rows(q, scale, torch.float32) - w).abs()
    assert (err <= scale[..., None] / 2 + 1e-6).all()
    q0, s0 = quantize_rows(torch.zeros(2, 8))  # an all-zero row stays zero, no division by zero
    assert (q0 == 0).all() and torch.isfinite(s0).all()


@pytest.mark.parametrize("rows", [1, 3, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_matches_the_dequantised_product(rows, dtype):
    g = torch.Generator().manual_seed(rows)
    q, scale = quantize_rows(torch.randn(48, 64, generator=g))
    x, bias = torch.randn(rows, 64, generator=g).to(dtype), torch.randn(48, generator=g).to(dtype)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.25, rtol=0.03)
    torch.testing.assert_close(int8_linear(x, q, scale, bias), int8_linear_native(x, q, scale, bias), **tol)

    def compiled(x):
        assert use_reduction(x) == (x.shape[0] <= 4)
        return int8_linear(x, q, scale, bias)

    out = torch.compile(compiled, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(out, int8_linear_native(x, q, scale, bias), **tol)


def test_a_quantized_linear_and_experts_keep_their_forms_in_agreement():
    g = torch.Generator().manual_seed(3)
    lin = materialize(Linear(32, 24, bias=True), torch.float32, "cpu")
    lin.weight.copy_(torch.randn(24, 32, generator=g))
    lin.bias.copy_(torch.randn(24, generator=g))
    x = torch.randn(5, 32, generator=g)
    before = lin(x)
    quantize_model(lin)
    assert lin.int8 and lin.weight.dtype == torch.int8
    torch.testing.assert_close(lin(x), before, atol=0.1, rtol=0.02)
    cfg = MoEConfig(hidden_size=16, num_experts=6, top_k=2, intermediate_size=8, expert_bias=False)
    experts = materialize(FusedExperts(cfg), torch.float32, "cpu")
    experts.w13.copy_(torch.randn(experts.w13.shape, generator=g))
    experts.w2.copy_(torch.randn(experts.w2.shape, generator=g))
    x, ids, w = (
        torch.randn(4, 16, generator=g),
        torch.tensor([[0, 5], [2, 2], [4, 1], [3, 0]]),
        torch.rand(4, 2),
    )
    float_out = experts.forward_native(x, w, ids)
    assert quantize_model(experts) == 1 and experts.w13.dtype == torch.int8
    native = experts.forward_native(x, w, ids)
    torch.testing.assert_close(experts(x, w, ids), native, atol=1e-4, rtol=1e-4)  # per-expert GEMMs
    torch.testing.assert_close(experts.forward_gathered(x, w, ids), native, atol=1e-4, rtol=1e-4)
    assert (native - float_out).abs().max() < 0.05 * float_out.abs().max()


@pytest.fixture(scope="module")
def int8_model(golden_dir):
    model = load_model(golden_dir / "tiny-bailing", torch.device("cpu"), torch.float32, quantization="int8")
    assert model.model.layers[1].mlp.experts.int8 and model.lm_head.weight.dtype == torch.int8
    assert model.model.layers[1].mlp.gate.weight.dtype == torch.float32  # routers stay float
    return model


def test_int8_logits_stay_close_to_float32(golden_dir, int8_model):
    golden = load_file(golden_dir / "logits.safetensors")
    devs, same = [], []
    for i in range(3):
        ids = golden[f"input_ids_{i}"][0]
        with torch.inference_mode():
            logits = int8_model.compute_logits(int8_model(ids, torch.arange(len(ids))))
        ref = golden[f"logits_{i}"][0]
        devs.append(((logits - ref).abs() / ref.std()).mean(-1))  # (T,) per token, in logit std
        same.append(logits.argmax(-1) == ref.argmax(-1))
    # Hidden size 64 makes per-row rounding coarse, and a token whose router sits near a tie takes
    # another expert (its logits then move by up to ~1.5 std); on average they move by ~0.05 std.
    assert torch.cat(devs).mean() < 0.1
    assert torch.cat(same).float().mean() > 0.9


def test_the_compiled_int8_step_gives_the_eager_int8_logits(int8_model):
    graph = DecodeGraph(int8_model)
    graph.warm_up(int8_model.runtime, torch.float32)
    assert not graph.failed
    for lengths in ([7], [4, 19, 2]):
        ids, positions, context = prefilled(int8_model, lengths)
        with torch.inference_mode():
            eager = int8_model.compute_logits(int8_model(ids, positions, context()))
            _, logits = graph(ids, positions, context())
        torch.testing.assert_close(logits, eager, atol=1e-4, rtol=1e-4)


def test_llm_takes_the_option_and_refuses_unknown_ones(golden_dir):
    with LLM(golden_dir / "tiny-bailing", quantization="int8") as llm:
        out = llm.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
        assert len(out[0].token_ids) == 4
        assert llm.engine.model.lm_head.int8
    with pytest.raises(ValueError, match="quantization.*int4"):
        EngineConfig(quantization="int4")
    with pytest.raises(ValueError, match="one rank"):
        EngineConfig(quantization="int8", tensor_parallel_size=2)
