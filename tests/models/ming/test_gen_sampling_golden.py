"""Ming image generation, diffusion side, against the official 2.0 code (golden ming-gen-tiny): the
schedule, every step's DiT inputs / outputs, the guided prediction, the latents, the decoded image and
its uint8 pixels, for text-to-image (dynamic shift), editing with a reference image, static shift."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.ming.generation.denoise import DenoiseJob, denoise_step, run_to_end
from models.ming.generation.generator import ImageGenerator
from tests.models.ming.gen_golden import (
    GEN_GOLDEN,
    GUIDANCE,
    HEIGHT,
    STATIC_SCHEDULER,
    STEPS,
    WIDTH,
    available,
    expected,
    maxdiff,
    tensors,
)

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
TOL = 1e-5
CASES = {"case3": "case3_t2i_dynamic", "case4": "case4_edit_dynamic", "case5": "case5_t2i_static"}


@pytest.fixture(scope="module")
def gen() -> ImageGenerator:
    return ImageGenerator.load(GEN_GOLDEN, "cpu", torch.float32)


@pytest.fixture()
def static(gen):
    """The generator with the static-shift scheduler of case 5."""
    saved = gen.scheduler_config
    gen.scheduler_config = json.loads((STATIC_SCHEDULER / "scheduler_config.json").read_text())
    yield gen
    gen.scheduler_config = saved


def jobs_for(gen: ImageGenerator, case: str) -> list[DenoiseJob]:
    """The case's requests: one job per condition row, fed the stored initial noise."""
    t = tensors()
    cond, noise = t[f"{case}.condition"], t[f"{case}.init_latents"]
    ref = t["case4.ref_pixels"][0] if case == "case4" else None
    return [
        gen.new_job(
            cond[i],
            height=HEIGHT,
            width=WIDTH,
            seeds=[0],
            steps=STEPS,
            guidance=GUIDANCE,
            latents=noise[i : i + 1],
            reference=ref,
        )
        for i in range(cond.shape[0])
    ]


def check_steps(gen: ImageGenerator, case: str) -> list[DenoiseJob]:
    t, exp = tensors(), expected()[CASES[case]]
    jobs = jobs_for(gen, case)
    assert [float(x) for x in jobs[0].timesteps] == pytest.approx(exp["timesteps"], abs=1e-4)
    assert [float(x) for x in jobs[0].scheduler.sigmas] == pytest.approx(exp["sigmas"], abs=1e-6)
    variant = gen.variant
    for i in range(STEPS):
        xs, ts, caps, refs = variant.dit_inputs(jobs)
        assert ts.tolist() == pytest.approx(exp["dit_timestep_inputs"][i], abs=1e-7)
        assert maxdiff(torch.stack(xs), t[f"{case}.step{i}.dit_x"]) < TOL
        assert maxdiff(torch.stack(caps), t[f"{case}.step{i}.dit_cap_feats"]) < TOL
        if case == "case4":
            assert maxdiff(torch.stack(refs), t[f"case4.step{i}.dit_ref_x"]) < TOL
        outs = variant.forward(jobs)  # per job (branches, k, C, h, w)
        dit_out = torch.cat([torch.cat([o[b] for o in outs]) for b in range(2)])
        assert maxdiff(dit_out, t[f"{case}.step{i}.dit_out"].squeeze(2)) < TOL
        pred = torch.cat([variant.model_output(j, o) for j, o in zip(jobs, outs, strict=True)])
        assert maxdiff(pred, t[f"{case}.step{i}.model_output"]) < TOL
        denoise_step(variant, jobs)
        assert maxdiff(torch.cat([j.latents for j in jobs]), t[f"{case}.step{i}.latents_out"]) < TOL
    return jobs


def check_image(gen: ImageGenerator, case: str, jobs: list[DenoiseJob]) -> None:
    t = tensors()
    latents = torch.cat([j.latents for j in jobs])
    assert maxdiff(latents, t[f"{case}.final_latents"]) < TOL
    assert maxdiff(latents / gen.vae.config.scaling_factor + gen.vae.config.shift_factor,
                   t[f"{case}.vae_decode_in"]) < TOL  # fmt: skip
    assert maxdiff(gen.decode_raw(latents), t[f"{case}.decoded"]) < TOL
    pixels = np.concatenate([gen.decode(j) for j in jobs]).astype(np.int16)
    want = t[f"{case}.image_uint8"].numpy().astype(np.int16)
    assert pixels.shape == want.shape and pixels.dtype == np.int16
    assert np.abs(pixels - want).max() <= 1  # the golden's own README: +-1 where rounding meets 1e-6
    assert (pixels != want).mean() < 1e-3


def test_text_to_image_dynamic_shift(gen):
    jobs = check_steps(gen, "case3")
    check_image(gen, "case3", jobs)


def test_editing_with_a_reference_image(gen):
    t = tensors()
    with torch.inference_mode():
        mode = gen.vae.encode(t["case4.ref_pixels"]).latent_dist.mode()
    assert maxdiff(mode, t["case4.ref_latent_mode"]) < TOL
    jobs = check_steps(gen, "case4")
    check_image(gen, "case4", jobs)


def test_static_shift(static):
    assert expected()["case5_scheduler_after_upstream_override"]["config_attr_use_dynamic_shifting"] is False
    jobs = check_steps(static, "case5")
    check_image(static, "case5", jobs)


def test_two_images_of_one_request_equal_the_two_request_batch(gen):
    """Case 3's batch of two as ONE job with k = 2 images (same DiT batch order) gives the same."""
    t = tensors()
    # one condition shared by both images (case 3 has two conditions, so compare against case 3's
    # first condition run twice as two single-image jobs)
    cond, noise = t["case3.condition"][0], t["case3.init_latents"]
    settings = dict(height=HEIGHT, width=WIDTH, seeds=[0, 1], steps=STEPS, guidance=GUIDANCE)
    pair = gen.new_job(cond, latents=noise, **settings)
    singles = [gen.new_job(cond, latents=noise[i : i + 1], **(settings | {"seeds": [i]})) for i in range(2)]
    run_to_end(gen.variant, [pair])
    run_to_end(gen.variant, singles)
    assert maxdiff(pair.latents, torch.cat([s.latents for s in singles])) < TOL


def test_seeded_noise_is_upstreams_draw(gen):
    job = gen.new_job(tensors()["case5.condition"][0], height=HEIGHT, width=WIDTH, seeds=[1234],
                      steps=STEPS, guidance=GUIDANCE)  # fmt: skip
    assert torch.equal(job.latents, tensors()["case5.init_latents"])
