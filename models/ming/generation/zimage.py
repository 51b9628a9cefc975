"""Ming-flash-omni 2.0's image DiT: diffusers' Z-Image transformer, plus the reference latent of editing.

`MingZImageTransformer` is the stock `ZImageTransformer2DModel` with one addition from upstream Ming
(`diffusion/transformer_z_image.py`): a reference latent `ref_x` joins its image on the frame axis
((C, 1, h, w) + (C, 1, h, w) -> (C, 2, h, w)), so the reference tokens sit at frame position +1 with the
same (h, w) positions, and only frame 0 (the image being denoised) is returned.
`ZImageVariant` holds the 2.0 sampling rules (upstream `ZImagePipeline.__call__`): the schedule uses
sigma_min 0 and the dynamic shift mu of the latent's token count; the DiT's time input is
(1000 - t) / 1000; guidance (when > 1) is pos + g·(pos - neg) over [cond..., uncond...]; the scheduler
steps on the negated prediction.
Legend: k = images of a request, C = latent channels, h / w = latent size, L = caption tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import ZImageTransformer2DModel

from models.ming.generation.condition import GenerationHeads
from models.ming.generation.denoise import DenoiseJob, shift_mu, split_by_branch


class MingZImageTransformer(ZImageTransformer2DModel):
    """`ZImageTransformer2DModel` that also takes `ref_x`: per image a reference latent (C, 1, h, w) or None.

    Its per-image (not per-token) layers - the timestep embedder and every adaLN modulation, whose
    input is [N, 256] - run one image at a time: a matrix product over N rows may round differently
    for another N, and an image must not depend on how many others share its forward (same seed,
    same bytes, whatever the batch). The token-level layers (N·L rows) are batch-invariant as they are.
    """

    _rows_by_image = False

    def _per_image_layers_by_row(self) -> None:
        per_image = [self.t_embedder, *(f.adaLN_modulation for f in self.all_final_layer.values())]
        per_image += [b.adaLN_modulation for b in (*self.noise_refiner, *self.layers) if b.modulation]
        for module in per_image:
            module.forward = _row_by_row(module.forward)
        self._rows_by_image = True

    def forward(self, x, t, cap_feats, *args, ref_x: list[torch.Tensor | None] | None = None, **kwargs):
        if not self._rows_by_image:
            self._per_image_layers_by_row()
        if ref_x is None or all(r is None for r in ref_x):
            return super().forward(x, t, cap_feats, *args, **kwargs)
        joined = [xi if r is None else torch.cat([xi, r], dim=1) for xi, r in zip(x, ref_x, strict=True)]
        kwargs["return_dict"] = False
        out = super().forward(joined, t, cap_feats, *args, **kwargs)[0]
        return ([o[:, :1] for o in out],)  # (C, 1, h, w): frame 0 only


def _row_by_row(forward):
    """forward(x [N, ...]) computed as N calls on [1, ...] rows, concatenated."""

    def rows(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.cat([forward(x[i : i + 1], *args, **kwargs) for i in range(x.shape[0])])

    return rows


def zimage_timesteps(scheduler, steps: int, latent_hw: tuple[int, int], patch: int = 2) -> None:
    """Set `scheduler`'s timesteps as upstream does: sigma_min 0, mu from the token count (used only
    when the scheduler config has use_dynamic_shifting; otherwise its static shift applies)."""
    cfg = scheduler.config
    mu = shift_mu(
        (latent_hw[0] // patch) * (latent_hw[1] // patch),
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", 1.15),
    )
    scheduler.sigma_min = 0.0
    with np.errstate(divide="ignore"):  # the time shift of sigma 0 divides by zero, to 0 (as upstream)
        scheduler.set_timesteps(steps, mu=mu)


class ZImageVariant:
    """The Z-Image sampling rules for `denoise.denoise_step`."""

    dit_class = MingZImageTransformer
    sigma_min_zero = True  # upstream sets scheduler.sigma_min = 0 before set_timesteps

    def __init__(self, dit: MingZImageTransformer, heads: GenerationHeads) -> None:
        self.dit, self.heads = dit, heads

    def set_timesteps(self, scheduler, steps: int, latent_hw: tuple[int, int]) -> None:
        zimage_timesteps(scheduler, steps, latent_hw, self.dit.all_patch_size[0])

    def captions(self, condition: torch.Tensor, negative: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """DenoiseJob fields from a condition [L, c]: the caption features of it and of the negative
        condition (upstream: always zeros; a negative prompt's condition when the request has one)."""
        neg = torch.zeros_like(condition) if negative is None else negative
        return {"context": self.heads.caption(condition), "uncond": self.heads.caption(neg)}

    def branches(self, job: DenoiseJob) -> int:
        return 2 if job.guidance > 1 else 1

    def dit_inputs(self, jobs: list[DenoiseJob]) -> tuple[list, torch.Tensor, list, list | None]:
        """(x list [C, 1, h, w], time inputs [N], caption list [L, D], ref list | None) over all jobs'
        images: every job's cond branch first, then every uncond branch (upstream's order for one job)."""
        dtype = self.dit.dtype
        xs, ts, caps, refs = [], [], [], []
        for branch in range(max(self.branches(j) for j in jobs)):
            for job in jobs:
                if branch >= self.branches(job):
                    continue
                t = (1000 - job.timestep) / 1000
                cap = job.context if branch == 0 else job.uncond
                ref = None if job.reference is None else job.reference.unsqueeze(1).to(dtype)
                for latent in job.latents:  # (C, h, w)
                    xs.append(latent.unsqueeze(1).to(dtype))  # (C, 1, h, w)
                    ts.append(t)
                    caps.append(cap.to(dtype))
                    refs.append(ref)
        has_ref = any(r is not None for r in refs)
        return xs, torch.stack(ts).to(xs[0].device), caps, (refs if has_ref else None)

    def forward(self, jobs: list[DenoiseJob]) -> list[torch.Tensor]:
        xs, ts, caps, refs = self.dit_inputs(jobs)
        out = self.dit(xs, ts, caps, ref_x=refs, return_dict=False)[0]  # list of (C, 1, h, w)
        flat = torch.stack(out).squeeze(2).float()  # (N, C, h, w)
        return split_by_branch(self, jobs, flat)

    def model_output(self, job: DenoiseJob, out: torch.Tensor) -> torch.Tensor:
        """-(pos + g·(pos - neg)) with CFG, else -pos: what upstream hands `scheduler.step`."""
        pos = out[0]
        if out.shape[0] == 1:
            return -pos
        neg = out[1]
        return -(pos + job.guidance * (pos - neg))
