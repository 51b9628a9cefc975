"""GPU path (bf16 on CUDA): runs only where a CUDA device exists; the CPU twins are tested elsewhere."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams

pytestmark = pytest.mark.gpu


def test_cuda_bf16_defaults_and_tracks_float32(demo_ling):
    gpu = LLM(demo_ling, device="cuda")
    assert gpu.dtype == torch.bfloat16
    assert gpu.model.model.layers[1].mlp.gate.weight.dtype == torch.float32
    cpu = LLM(demo_ling)
    ids = list(range(5, 69))
    a, b = gpu.logits(ids).cpu(), cpu.logits(ids)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8
    assert (a - b).abs().mean() < 0.1


def test_cuda_generation_runs(demo_ling):
    out = LLM(demo_ling, device="cuda").generate("Hello", SamplingParams(max_tokens=8, temperature=0.0))[0]
    assert 0 < len(out.token_ids) <= 8
