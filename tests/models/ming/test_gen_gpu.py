"""Image generation on CUDA (bf16, the serving dtype there): runs only where a CUDA device exists; the
fp32 CPU path is the reference tested everywhere else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ming.generation.denoise import run_to_end
from models.ming.generation.generator import ImageGenerator
from tests.models.ming.gen_golden import GEN_GOLDEN, tensors

pytestmark = pytest.mark.gpu
SETTINGS = {"height": 64, "width": 96, "steps": 3, "guidance": 2.0}


def test_cuda_bf16_tracks_the_float32_reference():
    cpu = ImageGenerator.load(GEN_GOLDEN, "cpu", torch.float32)
    gpu = ImageGenerator.load(GEN_GOLDEN, "cuda", torch.bfloat16)
    cond = tensors()["case3.condition"][0]
    noise = tensors()["case3.init_latents"][:1]
    a, b = (
        cpu.new_job(cond, seeds=[0], latents=noise, **SETTINGS),
        gpu.new_job(cond, seeds=[0], latents=noise, **SETTINGS),
    )
    run_to_end(cpu.variant, [a])
    run_to_end(gpu.variant, [b])
    assert b.latents.dtype == torch.float32  # the scheduler steps in fp32 whatever the DiT's dtype
    assert (a.latents - b.latents.cpu()).abs().mean() < 0.05
    pixels = gpu.decode(b)
    assert pixels.shape == (1, 64, 96, 3) and pixels.dtype == np.uint8


def test_cuda_batched_requests_equal_their_solo_runs():
    gen = ImageGenerator.load(GEN_GOLDEN, "cuda", torch.bfloat16)
    conds = tensors()["case2.condition"]
    jobs = [gen.new_job(conds[i], seeds=[10 + i], **SETTINGS) for i in range(2)]
    run_to_end(gen.variant, jobs)
    solo = gen.new_job(conds[0], seeds=[10], **SETTINGS)
    run_to_end(gen.variant, [solo])
    assert torch.equal(solo.latents, jobs[0].latents)
