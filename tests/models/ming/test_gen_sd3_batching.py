"""Concurrent Preview (SD3) requests share DiT forwards without changing a bit of any of them: alone or
among three, with and without a reference (4 branches), an image of k equals a request of its seed,
and incompatible requests form their own groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.ming.generation.denoise import groups, run_to_end
from models.ming.generation.generator import ImageGenerator
from tests.models.ming.gen_golden import available
from tests.models.ming.gen_sd3_tiny import CONDITION_DIM, HEIGHT, WIDTH, write_tiny_sd3

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
SETTINGS = {"height": HEIGHT, "width": WIDTH, "steps": 3, "guidance": 5.0}


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> ImageGenerator:
    return ImageGenerator.load(
        write_tiny_sd3(tmp_path_factory.mktemp("ming-sd3") / "ckpt"), "cpu", torch.float32
    )


def condition(i: int) -> torch.Tensor:
    return F.normalize(
        torch.randn(16, CONDITION_DIM, generator=torch.Generator().manual_seed(40 + i)), dim=-1
    )


def reference(i: int) -> torch.Tensor:
    return torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(50 + i)) * 2 - 1


def new_job(gen, i: int, edit: bool, **changes):
    extra = {"reference": reference(i), "image_guidance": 2.0} if edit else {}
    return gen.new_job(condition(i), seeds=[100 + i], **(SETTINGS | extra | changes))


@pytest.mark.parametrize("edit", [False, True])
def test_a_request_alone_equals_it_among_three(gen, edit):
    jobs = [new_job(gen, i, edit) for i in range(3)]
    assert len(groups(gen.variant, jobs)) == 1  # one DiT forward per step for all three
    assert gen.variant.branches(jobs[0]) == (4 if edit else 2)
    run_to_end(gen.variant, jobs)
    for i, job in enumerate(jobs):
        alone = new_job(gen, i, edit)
        run_to_end(gen.variant, [alone])
        assert torch.equal(job.latents, alone.latents)
        assert np.array_equal(gen.decode(job), gen.decode(alone))


def test_image_i_of_a_request_equals_a_request_with_seed_plus_i(gen):
    three = gen.new_job(condition(0), seeds=[100, 101, 102], **SETTINGS)
    run_to_end(gen.variant, [three])
    for i in range(3):
        one = gen.new_job(condition(0), seeds=[100 + i], **SETTINGS)
        run_to_end(gen.variant, [one])
        assert torch.equal(three.latents[i], one.latents[0])


def test_other_sizes_guidance_and_references_form_their_own_groups(gen):
    a = new_job(gen, 0, edit=False)
    b = new_job(gen, 1, edit=False, height=WIDTH, width=HEIGHT)
    c = new_job(gen, 2, edit=False, guidance=1.0)  # no CFG: 1 branch
    d = new_job(gen, 3, edit=True)  # a reference: 4 branches
    assert len(groups(gen.variant, [a, b, c, d])) == 4
    run_to_end(gen.variant, [a, b, c, d])
    for job, (i, edit, changes) in zip(
        (b, c, d),
        [(1, False, {"height": WIDTH, "width": HEIGHT}), (2, False, {"guidance": 1.0}), (3, True, {})],
        strict=True,
    ):
        alone = new_job(gen, i, edit, **changes)
        run_to_end(gen.variant, [alone])
        assert torch.equal(job.latents, alone.latents)
