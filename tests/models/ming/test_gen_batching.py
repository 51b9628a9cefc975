"""Concurrent image requests share DiT forwards without changing a single bit of any of them: a request
gives the same latents and pixels alone, with two others in the same forwards, with other step counts,
joining mid-way, or as one image among k of its own request (same seed -> same bytes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.ming.generation.denoise import groups, run_to_end
from models.ming.generation.generator import ImageGenerator
from tests.models.ming.gen_golden import GEN_GOLDEN, available, tensors

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
SETTINGS = {"height": 64, "width": 96, "steps": 4, "guidance": 3.0}


@pytest.fixture(scope="module")
def gen() -> ImageGenerator:
    return ImageGenerator.load(GEN_GOLDEN, "cpu", torch.float32)


def condition(i: int) -> torch.Tensor:
    base = tensors()["case2.condition"]
    return F.normalize(base[i % 2] + 0.05 * i, dim=-1)


def solo(gen, i: int, **changes):
    job = gen.new_job(condition(i), seeds=[100 + i], **(SETTINGS | changes))
    run_to_end(gen.variant, [job])
    return job


def test_a_request_alone_equals_it_among_three(gen):
    jobs = [gen.new_job(condition(i), seeds=[100 + i], **SETTINGS) for i in range(3)]
    assert len(groups(gen.variant, jobs)) == 1  # one DiT forward per step for all three
    run_to_end(gen.variant, jobs)
    for i, job in enumerate(jobs):
        alone = solo(gen, i)
        assert torch.equal(job.latents, alone.latents)
        assert np.array_equal(gen.decode(job), gen.decode(alone))


def test_image_i_of_a_request_equals_a_request_with_seed_plus_i(gen):
    three = gen.new_job(condition(0), seeds=[100, 101, 102], **SETTINGS)
    run_to_end(gen.variant, [three])
    pixels = gen.decode(three)
    for i in range(3):
        one = gen.new_job(condition(0), seeds=[100 + i], **SETTINGS)
        run_to_end(gen.variant, [one])
        assert torch.equal(three.latents[i], one.latents[0])
        assert np.array_equal(pixels[i], gen.decode(one)[0])


def test_different_step_counts_and_a_late_joiner_share_forwards(gen):
    short = gen.new_job(condition(0), seeds=[100], **(SETTINGS | {"steps": 3}))
    long = gen.new_job(condition(1), seeds=[101], **(SETTINGS | {"steps": 6}))
    gen.step([short, long])  # step 1: both in one forward
    late = gen.new_job(condition(2), seeds=[102], **SETTINGS)
    run_to_end(gen.variant, [short, long, late])
    assert torch.equal(short.latents, solo(gen, 0, steps=3).latents)
    assert torch.equal(long.latents, solo(gen, 1, steps=6).latents)
    assert torch.equal(late.latents, solo(gen, 2).latents)


def test_other_sizes_and_guidance_form_their_own_groups(gen):
    a = gen.new_job(condition(0), seeds=[100], **SETTINGS)
    b = gen.new_job(condition(1), seeds=[101], **(SETTINGS | {"height": 96, "width": 64}))
    c = gen.new_job(condition(2), seeds=[102], **(SETTINGS | {"guidance": 1.0}))  # no CFG: 1 branch
    assert len(groups(gen.variant, [a, b, c])) == 3
    run_to_end(gen.variant, [a, b, c])
    assert torch.equal(b.latents, solo(gen, 1, height=96, width=64).latents)
    assert torch.equal(c.latents, solo(gen, 2, guidance=1.0).latents)
