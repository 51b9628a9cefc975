"""Tensor parallel and FP8 on GPUs (marked gpu: `make gpu-check`): NCCL ranks give the one-rank
logits; an FP8 checkpoint loads on the GPU as on the CPU. CPU twins: test_parallel_parity.py, test_fp8.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bailing.demo.fp8_writer import write_fp8_checkpoint
from bailing.demo.writer import random_ling_state_dict
from engine import LLM
from engine.parallel.launch import run_local_group
from tests.engine.parallel_cases import ling_logits_on_gpu

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("expert_parallel", [False, True], ids=["TP", "TP+EP"])
def test_nccl_ranks_give_the_one_rank_logits(golden_dir, expert_parallel):
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip("needs two or more GPUs")
    size = 4 if gpus >= 4 else 2
    want = load_file(golden_dir / "logits.safetensors")["logits_0"][0]
    got = run_local_group(ling_logits_on_gpu, size, expert_parallel=expert_parallel)[0]
    assert (got - want).abs().max().item() <= 1e-4


def test_an_fp8_checkpoint_loads_on_the_gpu_as_on_the_cpu(golden_dir, tmp_path):
    config = json.loads((golden_dir / "tiny-bailing" / "config.json").read_text())
    folder = write_fp8_checkpoint(
        tmp_path / "fp8", config, random_ling_state_dict(config, seed=3), block=(16, 16)
    )
    ids = list(range(3, 40))
    cpu = LLM(folder, dtype=torch.float32).logits(ids)
    gpu = LLM(folder, device="cuda", dtype=torch.float32).logits(ids).cpu()
    assert (gpu - cpu).abs().max().item() <= 1e-4


def test_the_fp8_gemm_agrees_with_its_readable_twin_and_runs_on_hopper():
    from engine.fp8 import _fast_layout, fp8_linear, fp8_linear_native, quantize

    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(37, 512, device=device, generator=gen).to(torch.bfloat16)
    w, s = quantize(torch.randn(384, 512, device=device, generator=gen), (128, 128))
    got = fp8_linear(x, w, s, (128, 128)).float()
    want = fp8_linear_native(x, w, s, (128, 128), None).float()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()  # activations quantised to e4m3 too
    if torch.cuda.get_device_capability(device) >= (9, 0):
        assert _fast_layout(device) is not None, "the block-scaled FP8 GEMM should run on Hopper"


def test_on_the_gpu_fp8_weights_stay_fp8_and_track_the_cpu_model(golden_dir, tmp_path):
    config = json.loads((golden_dir / "tiny-bailing" / "config.json").read_text())
    folder = write_fp8_checkpoint(
        tmp_path / "fp8", config, random_ling_state_dict(config, seed=5), block=(16, 16)
    )
    gpu = LLM(folder, device="cuda")  # bf16 compute, FP8 weights kept (the GPU default)
    assert gpu.model.model.layers[1].mlp.experts.w13.dtype == torch.float8_e4m3fn
    ids = list(range(3, 60))
    a, b = gpu.logits(ids).cpu(), LLM(folder).logits(ids)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8
    assert (a - b).abs().mean() < 0.1
