"""The denoising loop, one step at a time, for any number of concurrent requests.

A `DenoiseJob` is one request's images in flight: latents, its own scheduler (timesteps of its own
step count), its caption features and guidance. `denoise_step(variant, jobs)` advances compatible
jobs (same `group_key`) by one step with ONE DiT forward over all their images and CFG branches,
then each job's guidance rule and `scheduler.step`. The variant (`zimage.ZImageVariant`,
`sd3.SD3Variant`) owns what differs: how a job's images become DiT inputs (branches), the DiT call,
and the guidance formula. Nothing here blocks or keeps threads: the caller decides when to step.
Legend: k = images of a request, C = latent channels, h / w = latent size, L = caption tokens.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(eq=False)
class DenoiseJob:
    """One request's images through the loop (all tensors on the DiT's device)."""

    latents: torch.Tensor  # (k, C, h, w) float32
    scheduler: Any  # its own diffusers scheduler, timesteps already set
    context: torch.Tensor  # (L, D) caption features of the condition (shared by the k images)
    uncond: torch.Tensor  # (L', D) caption features of the negative / zero condition
    guidance: float
    image_guidance: float = 1.0
    reference: torch.Tensor | None = None  # (C, h, w) reference latent (editing), never noised
    step: int = 0

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    @property
    def steps(self) -> int:
        return len(self.scheduler.timesteps)

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    @property
    def timestep(self) -> torch.Tensor:
        """The scheduler timestep of the next step (a 0-d float tensor)."""
        return self.scheduler.timesteps[self.step]


class Variant(Protocol):
    """What a DiT family contributes to the loop."""

    def branches(self, job: DenoiseJob) -> int:
        """DiT inputs per image and step (1 without guidance, 2 with CFG, 4 with image CFG)."""
        ...

    def forward(self, jobs: list[DenoiseJob]) -> list[torch.Tensor]:
        """One DiT call for all `jobs` -> per job its outputs [branches, k, C, h, w] (float32)."""
        ...

    def model_output(self, job: DenoiseJob, out: torch.Tensor) -> torch.Tensor:
        """Guided prediction [k, C, h, w] in the form the scheduler's `step` takes."""
        ...


def group_key(variant: Variant, job: DenoiseJob) -> Hashable:
    """Jobs with equal keys share a DiT forward without any padding (same shapes everywhere)."""
    ref = None if job.reference is None else tuple(job.reference.shape)
    return (tuple(job.latents.shape[1:]), ref, tuple(job.context.shape), tuple(job.uncond.shape),
            variant.branches(job))  # fmt: skip


def groups(variant: Variant, jobs: Iterable[DenoiseJob]) -> list[list[DenoiseJob]]:
    """Unfinished jobs split into forward-compatible groups, in order of first appearance."""
    found: dict[Hashable, list[DenoiseJob]] = {}
    for job in jobs:
        if not job.done:
            found.setdefault(group_key(variant, job), []).append(job)
    return list(found.values())


@torch.inference_mode()
def denoise_step(variant: Variant, jobs: list[DenoiseJob]) -> None:
    """Advance every job of one compatible group by one step (one DiT forward)."""
    outs = variant.forward(jobs)
    for job, out in zip(jobs, outs, strict=True):
        pred = variant.model_output(job, out)  # (k, C, h, w)
        job.latents = job.scheduler.step(pred.float(), job.timestep, job.latents, return_dict=False)[0]
        job.step += 1


def run_to_end(variant: Variant, jobs: list[DenoiseJob]) -> None:
    """Step every job until all are done (offline use: tests, benchmarks, the in-process API)."""
    while True:
        pending = groups(variant, jobs)
        if not pending:
            return
        for group in pending:
            denoise_step(variant, group)


def split_by_branch(variant: Variant, jobs: list[DenoiseJob], flat: torch.Tensor) -> list[torch.Tensor]:
    """A DiT output over [branch 0 of every job's images, branch 1 ..., ...] (N, C, h, w) -> per job
    [branches, k, C, h, w]: the order both variants lay their inputs out in."""
    parts: dict[int, list[torch.Tensor]] = {id(j): [] for j in jobs}
    i = 0
    for branch in range(max(variant.branches(j) for j in jobs)):
        for job in jobs:
            if branch < variant.branches(job):
                k = job.latents.shape[0]
                parts[id(job)].append(flat[i : i + k])
                i += k
    return [torch.stack(parts[id(j)]) for j in jobs]


def shift_mu(
    image_tokens: int,
    base_seq: int = 256,
    max_seq: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The dynamic time-shift exponent for `image_tokens` (the pipelines' `calculate_shift`: a line
    through (base_seq, base_shift) and (max_seq, max_shift)). Ours because diffusers keeps it in its
    pipeline modules, whose import pulls in transformers' image processors (and their warnings)."""
    slope = (max_shift - base_shift) / (max_seq - base_seq)
    return image_tokens * slope + (base_shift - slope * base_seq)


def initial_latents(seeds: list[int], shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(k, C, h, w) float32 noise; image i from its own CPU generator seeded seeds[i], so an image does
    not depend on the others of its request (and image 0 equals upstream's draw for one image)."""
    rows = [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    return torch.cat(rows).to(device)
