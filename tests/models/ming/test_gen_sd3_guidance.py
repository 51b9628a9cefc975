"""Preview guidance with a reference image (upstream `pipeline_stable_diffusion_3.py`, cfg_mode 1): the
four branches [uncond + zero ref, uncond + ref, prompt + zero ref, prompt + ref] and their mix, the two
branches that both carry the reference when image guidance <= 1, one branch when guidance <= 1; each
branch's DiT output and pooled input checked against a direct DiT call built by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from models.ming.generation.denoise import DenoiseJob, denoise_step
from models.ming.generation.generator import ImageGenerator
from models.ming.generation.sd3 import pooled_projection
from tests.models.ming.gen_golden import available, maxdiff
from tests.models.ming.gen_sd3_tiny import CONDITION_DIM, HEIGHT, WIDTH, write_tiny_sd3

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
TOL = 1e-5


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> ImageGenerator:
    return ImageGenerator.load(
        write_tiny_sd3(tmp_path_factory.mktemp("ming-sd3") / "ckpt"), "cpu", torch.float32
    )


def new_job(gen: ImageGenerator, guidance: float, image_guidance: float, with_ref: bool = True) -> DenoiseJob:
    g = torch.Generator().manual_seed(21)
    cond = F.normalize(torch.randn(16, CONDITION_DIM, generator=g), dim=-1)
    ref = torch.rand(3, HEIGHT, WIDTH, generator=g) * 2 - 1 if with_ref else None
    return gen.new_job(cond, height=HEIGHT, width=WIDTH, seeds=[3, 4], steps=3, guidance=guidance,
                       image_guidance=image_guidance, reference=ref)  # fmt: skip


def by_hand(
    gen: ImageGenerator, job: DenoiseJob, caption: torch.Tensor, ref: torch.Tensor | None
) -> torch.Tensor:
    """One branch as a direct DiT call over the job's k images: (k, C, h, w)."""
    k = job.latents.shape[0]
    width = gen.variant.dit.config.pooled_projection_dim
    pooled = F.adaptive_avg_pool1d(caption.T[None], 1)[:, :, 0]  # (1, J): token mean
    pooled = F.adaptive_avg_pool1d(pooled, width).expand(k, width)  # (k, P)
    with torch.inference_mode():
        return gen.variant.dit(
            hidden_states=job.latents, timestep=job.timestep.expand(k),
            encoder_hidden_states=caption.expand(k, *caption.shape), pooled_projections=pooled,
            ref_hidden_states=None if ref is None else ref.expand(k, *ref.shape), return_dict=False,
        )[0]  # fmt: skip


def check_branches(gen: ImageGenerator, job: DenoiseJob, want: list[tuple]) -> torch.Tensor:
    with torch.inference_mode():
        out = gen.variant.forward([job])[0]  # (branches, k, C, h, w)
    assert out.shape[:2] == (len(want), 2)
    for b, (caption, ref) in enumerate(want):
        assert maxdiff(out[b], by_hand(gen, job, caption, ref)) < TOL
    return out


def test_four_branches_with_reference_and_image_guidance(gen):
    job = new_job(gen, guidance=5.0, image_guidance=2.0)
    assert gen.variant.branches(job) == 4
    ref, zero = job.reference, torch.zeros_like(job.reference)
    out = check_branches(
        gen, job, [(job.uncond, zero), (job.uncond, ref), (job.context, zero), (job.context, ref)]
    )
    uncond, image, text, full = out
    want = uncond + 2.0 * (image - uncond) + 5.0 * (full - image)  # cfg_mode 1
    assert maxdiff(gen.variant.model_output(job, out), want) < 1e-6
    assert (text - full).abs().max() > 1e-3  # the text-only branch is a distinct input (unused by mode 1)
    expected = copy.deepcopy(job.scheduler).step(want, job.timestep, job.latents, return_dict=False)[0]
    denoise_step(gen.variant, [job])
    assert maxdiff(job.latents, expected) < TOL


def test_two_branches_both_with_the_reference_when_image_guidance_is_off(gen):
    job = new_job(gen, guidance=5.0, image_guidance=1.0)
    assert gen.variant.branches(job) == 2
    out = check_branches(gen, job, [(job.uncond, job.reference), (job.context, job.reference)])
    uncond, cond = out
    assert maxdiff(gen.variant.model_output(job, out), uncond + 5.0 * (cond - uncond)) < 1e-6


def test_text_to_image_cfg_is_uncond_then_prompt(gen):
    job = new_job(gen, guidance=3.0, image_guidance=2.0, with_ref=False)  # image guidance needs a reference
    assert gen.variant.branches(job) == 2
    out = check_branches(gen, job, [(job.uncond, None), (job.context, None)])
    assert maxdiff(gen.variant.model_output(job, out), out[0] + 3.0 * (out[1] - out[0])) < 1e-6


@pytest.mark.parametrize("with_ref", [False, True])
def test_no_guidance_at_or_below_one(gen, with_ref):
    job = new_job(gen, guidance=1.0, image_guidance=2.0, with_ref=with_ref)
    assert gen.variant.branches(job) == 1
    out = check_branches(gen, job, [(job.context, job.reference)])
    assert torch.equal(gen.variant.model_output(job, out), out[0])


def test_each_branch_pools_its_own_caption(gen):
    """The unconditional branch's pooled input is pool(mlp(0)), not zeros (upstream pools inside the
    DiT wrapper, per row; the pipeline's pooled_prompt_embeds never reach the DiT)."""
    job = new_job(gen, guidance=5.0, image_guidance=2.0)
    pooled = gen.variant.dit_inputs([job])["pooled_projections"]  # (4·k, P), branch-major
    width = gen.variant.dit.config.pooled_projection_dim
    zero_caption = gen.heads.caption(torch.zeros(16, CONDITION_DIM))
    assert torch.equal(pooled[0], pooled_projection(zero_caption, width))
    assert pooled[0].abs().max() > 1e-3
    assert torch.equal(pooled[-1], pooled_projection(job.context, width))


def test_negative_condition_must_match_the_condition(gen):
    cond = torch.zeros(16, CONDITION_DIM)
    with pytest.raises(ValueError, match="negative condition"):
        gen.new_job(cond, height=HEIGHT, width=WIDTH, seeds=[0], steps=2, guidance=5.0,
                    negative=torch.zeros(8, CONDITION_DIM))  # fmt: skip
