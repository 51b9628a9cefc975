"""The compiled decode step (engine.decode_graph) against the eager forward it replaces: the few-row
products in reduction form, the gathered MoE, the graph's logits for 1..4 rows, the engine's greedy
tokens against the golden reference, the switch-over after warm-up, and the eager fallback."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from engine import LLM, SamplingParams
from engine.config import MoEConfig
from engine.decode_graph import DecodeGraph, supports
from engine.layers.base import materialize
from engine.layers.matvec import FEW_ROWS, linear, linear_as_reduction, use_reduction
from engine.layers.moe import FusedExperts
from engine.model_loader import load_model
from tests.engine.decode_cases import prefilled

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_as_reduction_is_the_product(dtype):
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).to(dtype) for s in ((3, 40), (24, 40), (24,)))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.1, rtol=0.02)
    torch.testing.assert_close(linear_as_reduction(x, w, b), F.linear(x, w, b), **tol)
    torch.testing.assert_close(linear_as_reduction(x, w), F.linear(x, w), **tol)


def test_reduction_form_only_inside_a_compiled_graph():
    x, w = torch.randn(1, 8), torch.randn(4, 8)
    assert not use_reduction(x)  # eager: F.linear
    assert linear(x, w).equal(F.linear(x, w))
    seen = []

    def probe(x):
        seen.append(use_reduction(x))
        return x + 1

    torch.compile(probe, backend="eager", fullgraph=True)(x)
    torch.compile(probe, backend="eager", fullgraph=True)(torch.randn(FEW_ROWS + 1, 8))
    assert seen == [True, False]


def test_gathered_experts_equal_the_native_loop():
    cfg = MoEConfig(
        hidden_size=16, intermediate_size=8, num_experts=6, top_k=2, score_function="sigmoid",
        norm_topk_prob=True, routed_scaling_factor=1.0, n_group=1, topk_group=1, expert_bias=False,
    )  # fmt: skip
    experts = materialize(FusedExperts(cfg), torch.float32, "cpu")
    g = torch.Generator().manual_seed(1)
    experts.w13.copy_(torch.randn(experts.w13.shape, generator=g))
    experts.w2.copy_(torch.randn(experts.w2.shape, generator=g))
    x = torch.randn(3, 16, generator=g)
    ids = torch.tensor([[0, 5], [2, 2], [4, 1]])
    weights = torch.rand(3, 2, generator=g)
    torch.testing.assert_close(
        experts.forward_gathered(x, weights, ids),
        experts.forward_native(x, weights, ids),
        atol=1e-4,
        rtol=1e-5,
    )


@pytest.fixture(scope="module")
def golden_model(golden_dir):
    return load_model(golden_dir / "tiny-bailing", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def compiled(golden_model):
    graph = DecodeGraph(golden_model)
    rt = golden_model.runtime
    graph.warm_up(rt, torch.float32)
    assert graph.ready.is_set() and not graph.failed
    return graph


@pytest.mark.parametrize("lengths", [[9], [3, 17], [5, 1, 12], [8, 8, 2, 30]])
def test_compiled_step_gives_the_eager_logits(golden_model, compiled, lengths):
    ids, positions, context = prefilled(golden_model, lengths)
    with torch.inference_mode():
        eager_hidden = golden_model(ids, positions, context())
        eager = golden_model.compute_logits(eager_hidden)
        hidden, logits = compiled(ids, positions, context())  # rewrites the same K/V slots
    torch.testing.assert_close(hidden, eager_hidden, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, eager, atol=1e-4, rtol=1e-4)
    assert logits.argmax(-1).equal(eager.argmax(-1))


def test_engine_switches_to_the_graph_and_keeps_the_golden_tokens(golden_dir):
    golden = load_file(golden_dir / "logits.safetensors")
    prompts = [golden["gen_prompt_ids"][0].tolist()] + [
        golden[f"input_ids_{i}"][0].tolist() for i in range(3)
    ]
    eager = LLM(golden_dir / "tiny-bailing", compile_decode=False)
    assert eager.engine.runner.decode_graph is None
    expected = [o.token_ids for o in eager.generate(prompts, GREEDY)]
    eager.close()
    with LLM(golden_dir / "tiny-bailing", compile_decode=True) as llm:
        graph = llm.engine.runner.decode_graph
        assert graph is not None and graph.ready.wait(300) and not graph.failed
        before = graph.steps
        one = llm.generate(prompts[:1], GREEDY)[0].token_ids  # batch 1
        together = [o.token_ids for o in llm.generate(prompts, GREEDY)]  # 4 rows, then fewer
        assert graph.steps - before >= 2 * (GREEDY.max_tokens - 1)
    assert one == expected[0] == golden["gen_sequence_ids"][0, 16:28].tolist()
    assert together == expected


def test_a_graph_that_fails_to_compile_leaves_decode_eager(golden_model, monkeypatch):
    graph = DecodeGraph(golden_model)

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(graph, "_compiled", broken)
    graph.warm_up(golden_model.runtime, torch.float32)
    assert graph.ready.is_set() and graph.failed
    ids, positions, context = prefilled(golden_model, [6])

    class Step:  # the fields `takes` reads
        q_lens, extra, block_lengths = [1], {}, None
        rows = torch.tensor([0])

    Step.ids, Step.positions = ids, positions
    assert not graph.takes(Step)  # the runner runs the step eager
    assert graph(ids, positions, context()) is None


def test_which_models_and_devices_compile(golden_model, golden_dir):
    cpu = torch.device("cpu")
    assert supports(golden_model, cpu, 1)
    assert not supports(golden_model, torch.device("cuda"), 1)  # CUDA graphs are another path
    assert not supports(golden_model, cpu, 2)  # collectives stay eager
    type(golden_model).diffusion = True
    try:
        assert not supports(golden_model, cpu, 1)
    finally:
        del type(golden_model).diffusion
    layer = golden_model.model.layers[0].attention.dense
    layer.fp8_block = (128, 128)
    try:
        assert not supports(golden_model, cpu, 1)
    finally:
        layer.fp8_block = None


def test_the_switch_is_a_config_field_or_the_environment(monkeypatch):
    from engine.engine_config import EngineConfig

    monkeypatch.delenv("BAILING_COMPILE", raising=False)
    assert EngineConfig().wants_compiled_decode  # on by default
    monkeypatch.setenv("BAILING_COMPILE", "0")
    assert not EngineConfig().wants_compiled_decode
    assert EngineConfig(compile_decode=True).wants_compiled_decode  # the field wins
    monkeypatch.setenv("BAILING_COMPILE", "1")
    assert not EngineConfig(compile_decode=False).wants_compiled_decode


def test_the_worker_flag_parses():
    from bailing.cli import build_parser

    base = ["worker", "--family", "ling", "--model", "m"]
    assert build_parser().parse_args(base).compile_decode is None
    assert build_parser().parse_args([*base, "--compile-decode"]).compile_decode is True
    assert build_parser().parse_args([*base, "--no-compile-decode"]).compile_decode is False


def test_each_graph_has_a_compile_cache_of_its_own(golden_model):
    # dynamo caches per code object (8 entries by default): engines in one process must not share one
    a, b = DecodeGraph(golden_model), DecodeGraph(golden_model)
    code_a = a._compiled._torchdynamo_orig_callable.__code__
    code_b = b._compiled._torchdynamo_orig_callable.__code__
    assert code_a is not code_b and code_a.co_code == code_b.co_code
