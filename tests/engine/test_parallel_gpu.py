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
