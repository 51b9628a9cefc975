"""The Preview (SD3) loop against diffusers' own `StableDiffusion3Pipeline` as the reference.

"The corresponding diffusers pipeline" is the stock `diffusers.StableDiffusion3Pipeline`, called directly:
its own scheduler handling (`retrieve_timesteps`, `calculate_shift` with max_shift falling back to 1.16
when the scheduler config has use_dynamic_shifting), its own CFG (batch [negative, positive],
uncond + g·(cond - uncond)), its own `scheduler.step` and VAE decode / postprocess. Its components are
the checkpoint's scheduler folder (a fresh `from_pretrained`), our loaded VAE, no text encoders, and
as transformer the same `MingSD3Transformer` instance our loop uses (checked against upstream's
vendored class in test_gen_sd3_dit). The pipeline is given what upstream's `SD3Model_withMLP` feeds
the DiT: prompt_embeds = the condition MLP's output, negative_prompt_embeds = the MLP of a zero
condition, and as pooled_prompt_embeds / negative_pooled_prompt_embeds each branch's own pooled
vector, computed here with upstream's expression (mean over tokens, adaptive pooling to P). Same
noise; fp32; latents and decoded pixels within 1e-5, for one request and a 2-request batch (our two
requests share every DiT forward, as do the pipeline's).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from models.ming.generation.denoise import groups, run_to_end
from models.ming.generation.generator import ImageGenerator
from tests.models.ming.gen_golden import available, maxdiff
from tests.models.ming.gen_sd3_tiny import CONDITION_DIM, HEIGHT, WIDTH, write_tiny_sd3

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
TOL = 1e-5
STEPS, GUIDANCE = 4, 5.0
SCHEDULERS = {
    "dynamic": "scheduler",
    "static": "variants/static_shift/scheduler",
    "default_max_shift": "variants/default_max_shift/scheduler",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_tiny_sd3(tmp_path_factory.mktemp("ming-sd3") / "ckpt")


@pytest.fixture(scope="module")
def gen(root) -> ImageGenerator:
    return ImageGenerator.load(root, "cpu", torch.float32)


def conditions(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [F.normalize(torch.randn(16, CONDITION_DIM, generator=g), dim=-1) for _ in range(n)]


def upstream_pooled(caption: torch.Tensor, width: int) -> torch.Tensor:
    """`SD3Model_withMLP`'s pooled input for a batch of caption features (B, L, J) -> (B, P)."""
    mean = F.adaptive_avg_pool1d(caption.permute(0, 2, 1), output_size=1)
    return F.adaptive_avg_pool1d(mean.squeeze(2), output_size=width)


def pipeline_run(
    gen: ImageGenerator, scheduler_dir, conds, noise, output_type: str, guidance: float = GUIDANCE
):
    pipe = StableDiffusion3Pipeline(
        transformer=gen.variant.dit, scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(scheduler_dir),
        vae=gen.vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    width = gen.variant.dit.config.pooled_projection_dim
    with torch.inference_mode():
        pos = torch.stack([gen.heads.caption(c) for c in conds])  # (B, L, J)
        neg = torch.stack([gen.heads.caption(torch.zeros_like(c)) for c in conds])
    out = pipe(
        prompt_embeds=pos, negative_prompt_embeds=neg, pooled_prompt_embeds=upstream_pooled(pos, width),
        negative_pooled_prompt_embeds=upstream_pooled(neg, width),
        height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=guidance,
        latents=noise.clone(), output_type=output_type,
    )  # fmt: skip
    return out.images, pipe.scheduler.timesteps


def our_run(gen: ImageGenerator, root, scheduler: str, conds, noise, guidance: float = GUIDANCE):
    gen.scheduler_config = json.loads((root / SCHEDULERS[scheduler] / "scheduler_config.json").read_text())
    jobs = [
        gen.new_job(
            c, height=HEIGHT, width=WIDTH, seeds=[0], steps=STEPS, guidance=guidance, latents=noise[i : i + 1]
        )
        for i, c in enumerate(conds)
    ]
    assert len(groups(gen.variant, jobs)) == 1  # the requests share each step's DiT forward
    run_to_end(gen.variant, jobs)
    return jobs


@pytest.mark.parametrize(("requests", "scheduler"), [
    (1, "dynamic"), (2, "dynamic"), (1, "static"), (1, "default_max_shift"),
])  # fmt: skip
def test_sd3_loop_equals_diffusers_pipeline(gen, root, requests, scheduler):
    conds = conditions(requests)
    noise = torch.randn(
        requests, *gen.latent_shape(HEIGHT, WIDTH), generator=torch.Generator().manual_seed(7)
    )
    jobs = our_run(gen, root, scheduler, conds, noise)
    sched_dir = root / SCHEDULERS[scheduler]
    want, timesteps = pipeline_run(gen, sched_dir, conds, noise, "latent")
    assert torch.equal(jobs[0].timesteps, timesteps)
    assert maxdiff(torch.cat([j.latents for j in jobs]), want) < TOL
    decoded = torch.cat([gen.decode_raw(j.latents) for j in jobs])
    want_decoded, _ = pipeline_run(gen, sched_dir, conds, noise, "pt")  # postprocessed: [0, 1]
    assert maxdiff((decoded / 2 + 0.5).clamp(0, 1), want_decoded) < TOL
    pixels = np.concatenate([gen.decode(j) for j in jobs]).astype(np.int16)
    want_pil, _ = pipeline_run(gen, sched_dir, conds, noise, "pil")
    assert pixels.shape == (requests, HEIGHT, WIDTH, 3)
    assert np.abs(pixels - np.stack([np.asarray(p) for p in want_pil])).max() <= 1


def test_without_guidance_equals_the_pipeline_without_cfg(gen, root):
    conds = conditions(1)
    noise = torch.randn(1, *gen.latent_shape(HEIGHT, WIDTH), generator=torch.Generator().manual_seed(8))
    jobs = our_run(gen, root, "dynamic", conds, noise, guidance=1.0)
    assert gen.variant.branches(jobs[0]) == 1
    want, _ = pipeline_run(gen, root / "scheduler", conds, noise, "latent", guidance=1.0)
    assert maxdiff(jobs[0].latents, want) < TOL


def test_max_shift_fallback_is_the_schedulers_own_default(gen, root):
    """The pipeline's max_shift fallback (1.16) never applies: a scheduler built from a config without
    max_shift fills in its own default 1.15, so that folder's schedule equals the dynamic one; the
    static shift gives another."""
    schedules = {}
    for name in SCHEDULERS:
        gen.scheduler_config = json.loads((root / SCHEDULERS[name] / "scheduler_config.json").read_text())
        schedules[name] = gen.new_scheduler(STEPS, (8, 12)).timesteps
    assert torch.equal(schedules["default_max_shift"], schedules["dynamic"])
    assert not torch.allclose(schedules["static"], schedules["dynamic"])
