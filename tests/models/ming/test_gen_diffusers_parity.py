"""Our generation loop against diffusers' own pipelines as the reference: with the same condition
tensors and noise, DiT + scheduler + CFG + VAE decode give the same latents and pixels as the pipeline
called directly (fp32, 1e-5), for a single request and for a 2-request batch run in one DiT forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    ZImagePipeline,
    ZImageTransformer2DModel,
)

from models.ming.generation.denoise import run_to_end
from models.ming.generation.generator import ImageGenerator
from tests.models.ming.gen_golden import GEN_GOLDEN, available, maxdiff, tensors

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
TOL = 1e-5
H, W, STEPS, GUIDANCE = 64, 96, 4, 3.0


@pytest.fixture(scope="module")
def gen() -> ImageGenerator:
    return ImageGenerator.load(GEN_GOLDEN, "cpu", torch.float32)


@pytest.fixture(scope="module")
def zimage_pipeline() -> ZImagePipeline:
    """diffusers' Z-Image pipeline on the checkpoint's own folders (stock classes, no Ming code)."""
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(GEN_GOLDEN / "scheduler"),
        vae=AutoencoderKL.from_pretrained(GEN_GOLDEN / "vae").eval(),
        text_encoder=None,
        tokenizer=None,
        transformer=ZImageTransformer2DModel.from_pretrained(GEN_GOLDEN / "transformer").eval(),
    )


def conditions(n: int) -> list[torch.Tensor]:
    """n distinct conditions [Q, c] (the golden's two, then perturbed copies)."""
    base = tensors()["case2.condition"]
    return [torch.nn.functional.normalize(base[i % 2] + 0.1 * i, dim=-1) for i in range(n)]


def reference_run(pipe: ZImagePipeline, gen: ImageGenerator, conds, noise, output_type: str):
    """The diffusers call with Ming's inputs: caption features through the checkpoint's MLP, zero
    negative condition, and Ming's schedule (sigma_min 0: linspace(1, 0, steps) before the shift)."""
    with torch.inference_mode():
        pos = [gen.heads.caption(c) for c in conds]
        neg = [gen.heads.caption(torch.zeros_like(c)) for c in conds]
    out = pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        height=H,
        width=W,
        num_inference_steps=STEPS,
        sigmas=np.linspace(1.0, 0.0, STEPS).tolist(),
        guidance_scale=GUIDANCE,
        latents=noise.clone(),
        output_type=output_type,
    )
    return out.images


@pytest.mark.parametrize("requests", [1, 2])
def test_zimage_loop_equals_diffusers_pipeline(gen, zimage_pipeline, requests):
    conds = conditions(requests)
    shape = gen.latent_shape(H, W)
    noise = torch.randn(requests, *shape, generator=torch.Generator().manual_seed(7))
    jobs = [
        gen.new_job(c, height=H, width=W, seeds=[0], steps=STEPS, guidance=GUIDANCE, latents=noise[i : i + 1])
        for i, c in enumerate(conds)
    ]
    run_to_end(gen.variant, jobs)  # the requests share each step's DiT forward
    ours = torch.cat([j.latents for j in jobs])
    want = reference_run(zimage_pipeline, gen, conds, noise, "latent")
    assert maxdiff(ours, want) < TOL
    decoded = torch.cat([gen.decode_raw(j.latents) for j in jobs])
    want_decoded = reference_run(zimage_pipeline, gen, conds, noise, "pt")  # postprocessed: [0, 1]
    assert maxdiff((decoded / 2 + 0.5).clamp(0, 1), want_decoded) < TOL
    pixels = np.concatenate([gen.decode(j) for j in jobs]).astype(np.int16)
    want_pixels = np.stack([np.asarray(p) for p in reference_run(zimage_pipeline, gen, conds, noise, "pil")])
    assert pixels.shape == (requests, H, W, 3)
    assert np.abs(pixels - want_pixels).max() <= 1  # uint8 rounding of values 1e-6 apart
