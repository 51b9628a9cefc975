"""ImageGenerator: a checkpoint's image-generation parts, loaded strictly, and the steps that use them.

Flow of one request: the thinker's last-scale query hidden states [Q, H] -> `condition` [Q, c] ->
`new_job` (caption features, seeded noise, the request's own scheduler, the encoded reference) ->
`step(jobs)` as often as needed (one DiT forward per compatible group, any number of requests) ->
`decode(job)` -> uint8 pixels. `generate` runs that for a list of conditions in one call (tests,
benchmarks, offline use). The variant (Z-Image 2.0 / SD3 Preview) comes from `mlp/config.json`.
With a `byt5/` folder, `add_glyph` appends the prompt's quoted text as ByT5 glyph tokens [T, c] to the
condition (upstream's glyph branch; zeros on a negative condition) before `new_job`.
Legend: Q = queries of the last scale, H = thinker hidden, c = condition width, k = images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from diffusers.image_processor import VaeImageProcessor

from engine.errors import CheckpointError
from engine.safetensors_io import SafetensorsFile
from models.ming.generation.condition import BidirectionalConnector, GenerationHeads, condition_from_queries
from models.ming.generation.config import ImageGenConfig, image_generation_config, read_json
from models.ming.generation.denoise import DenoiseJob, denoise_step, groups, initial_latents, run_to_end
from models.ming.generation.glyph_loading import load_glyph_encoder
from models.ming.generation.loading import build_empty, check_materialized, load_part, load_strict
from models.ming.generation.loading import materialize_module as materialize
from models.ming.generation.queries import QueryTokens
from models.ming.generation.sd3 import SD3Variant
from models.ming.generation.zimage import ZImageVariant

VARIANTS: dict[str, Any] = {"zimage": ZImageVariant, "sd3": SD3Variant}


@dataclass(frozen=True)
class ThinkerFacts:
    """What the heads need from the thinker's config.json: its hidden width and query token ids."""

    hidden_size: int
    tokens: QueryTokens

    @classmethod
    def read(cls, root: Path) -> ThinkerFacts:
        llm = read_json(root / "config.json").get("llm_config") or {}
        hidden = llm.get("hidden_size")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
            raise CheckpointError(f"{root}/config.json llm_config.hidden_size must be a positive integer")
        return cls(hidden, QueryTokens.from_patch_token(int(llm.get("image_patch_token", 157157))))


PARTS = ("all", "condition", "diffusion")


class ImageGenerator:
    """`parts`: "all"; "condition" (what a thinker worker that hands requests to a stage worker needs:
    the queries, projections and connector, no DiT or VAE); "diffusion" (what a stage worker needs:
    the condition MLP, DiT, VAE and scheduler, no connector)."""

    def __init__(
        self, root: Path, cfg: ImageGenConfig, device: torch.device, dtype: torch.dtype, parts: str = "all"
    ) -> None:
        if parts not in PARTS:
            raise ValueError(f"parts must be one of {PARTS}, got {parts!r}")
        self.root, self.config, self.device, self.dtype, self.parts = root, cfg, device, dtype, parts
        self.thinker = ThinkerFacts.read(root)
        connector_config = read_json(root / "connector" / "config.json")
        self.connector = None if parts == "diffusion" else _load_connector(root / "connector", device, dtype)
        hidden = int(connector_config.get("hidden_size", 0))
        self.heads = _load_heads(root / "mlp", cfg, self.thinker.hidden_size, hidden, device, dtype)
        no_glyph = parts == "diffusion"  # the glyph tokens are part of the condition a stage receives
        self.glyph = None if no_glyph else load_glyph_encoder(root / "byt5", cfg.condition_dim, device, dtype)
        self.variant = self.vae = None
        if parts != "condition":
            self._load_diffusion(root, device, dtype)

    def _load_diffusion(self, root: Path, device: torch.device, dtype: torch.dtype) -> None:
        variant_cls = VARIANTS[self.config.dit_type]
        dit_config = read_json(root / "transformer" / "config.json")
        dit = load_part(
            lambda: variant_cls.dit_class.from_config(dit_config), root / "transformer", device, dtype
        )
        self.variant = variant_cls(dit, self.heads)
        vae_config = read_json(root / "vae" / "config.json")
        self.vae: AutoencoderKL = load_part(
            lambda: AutoencoderKL.from_config(vae_config), root / "vae", device, dtype
        )
        self.scheduler_config = read_json(root / "scheduler" / "scheduler_config.json")
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.images = VaeImageProcessor(vae_scale_factor=self.vae_scale * 2)

    @classmethod
    def load(
        cls, root: str | Path, device: torch.device | str, dtype: torch.dtype, parts: str = "all"
    ) -> ImageGenerator | None:
        """The checkpoint's generator (those `parts`), or None when it has no image-generation heads."""
        root = Path(root)
        cfg = image_generation_config(root)
        return None if cfg is None else cls(root, cfg, torch.device(device), dtype, parts)

    # ---- condition ----------------------------------------------------------------------------
    @torch.inference_mode()
    def condition(self, queries: torch.Tensor) -> torch.Tensor:
        """The last scale's query hidden states [B, Q, H] (or [Q, H]) -> condition [B, Q, c] ([Q, c])."""
        if self.connector is None:
            raise RuntimeError("this generator holds the diffusion parts only (parts='diffusion')")
        squeeze = queries.dim() == 2
        out = condition_from_queries(
            self.heads, self.connector, queries.to(self.device).reshape(-1, *queries.shape[-2:])
        )
        return out[0] if squeeze else out

    @torch.inference_mode()
    def add_glyph(
        self, condition: torch.Tensor, negative: torch.Tensor | None, text: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Upstream's glyph branch for one request: condition [Q, c] -> [Q + T, c], `text`'s glyph
        tokens after it (`glyph.extract_glyph_text` of the prompt); a negative condition gains zeros
        [T, c] (None stays None: the variant's zero condition then has the full shape). Unchanged
        without a `byt5/` folder or without text."""
        if self.glyph is None or not text:
            return condition, negative
        tokens = self.glyph([text])[0].to(condition.device, condition.dtype)  # (T, c)
        negative = None if negative is None else torch.cat([negative, torch.zeros_like(tokens)])
        return torch.cat([condition, tokens]), negative

    # ---- denoising ----------------------------------------------------------------------------
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of an image of height x width (both multiples of 2 * vae_scale)."""
        step = self.vae_scale * 2
        if height % step or width % step:
            raise ValueError(f"image size {width}x{height} must be a multiple of {step} on both sides")
        return (self.vae.config.latent_channels, 2 * (height // step), 2 * (width // step))

    def new_scheduler(self, steps: int, latent_hw: tuple[int, int]) -> FlowMatchEulerDiscreteScheduler:
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        self.variant.set_timesteps(scheduler, steps, latent_hw)
        return scheduler

    @torch.inference_mode()
    def new_job(
        self,
        condition: torch.Tensor,
        *,
        height: int,
        width: int,
        seeds: Sequence[int],
        steps: int,
        guidance: float,
        image_guidance: float = 1.0,
        negative: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
    ) -> DenoiseJob:
        """One request's images (k = len(seeds)); `reference` = pixels [3, height, width] in [-1, 1]."""
        if self.variant is None:
            raise RuntimeError("this generator holds the condition parts only (parts='condition')")
        shape = self.latent_shape(height, width)
        noise = latents if latents is not None else initial_latents(list(seeds), shape, self.device)
        ref = None if reference is None else self.encode_reference(reference)
        return DenoiseJob(
            latents=noise.to(self.device, torch.float32),
            scheduler=self.new_scheduler(steps, shape[1:]),
            guidance=float(guidance),
            image_guidance=float(image_guidance),
            reference=ref,
            **self.variant.captions(
                condition.to(self.device), None if negative is None else negative.to(self.device)
            ),
        )

    def step(self, jobs: Sequence[DenoiseJob]) -> None:
        """One denoising step for every unfinished job (one DiT forward per compatible group)."""
        for group in groups(self.variant, jobs):
            denoise_step(self.variant, group)

    @torch.inference_mode()
    def encode_reference(self, pixels: torch.Tensor) -> torch.Tensor:
        """Reference pixels [3, H, W] in [-1, 1] -> latent (C, h, w): the VAE's mode, shifted, scaled."""
        z = self.vae.encode(pixels[None].to(self.device, self.vae.dtype)).latent_dist.mode()[0]
        shift = self.vae.config.shift_factor or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).float()

    @torch.inference_mode()
    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents [k, C, h, w] -> VAE output [k, 3, H, W] (about [-1, 1], unclamped)."""
        shift = self.vae.config.shift_factor or 0.0
        z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        return self.vae.decode(z, return_dict=False)[0]

    def decode(self, job: DenoiseJob) -> np.ndarray:
        """A finished job's images as uint8 [k, H, W, 3] (diffusers' postprocess: clamp, round), one
        image per VAE call: an image's bytes never depend on how many the request asked for."""
        raw = [self.decode_raw(latent[None]).float() for latent in job.latents]  # each (1, 3, H, W)
        pils = [self.images.postprocess(r, output_type="pil")[0] for r in raw]
        return np.stack([np.asarray(p) for p in pils])

    def generate(self, conditions: Sequence[torch.Tensor], **settings: Any) -> list[np.ndarray]:
        """Offline: one job per condition [Q, c] with the same `new_job` settings, run together."""
        jobs = [self.new_job(c, **settings) for c in conditions]
        run_to_end(self.variant, jobs)
        return [self.decode(j) for j in jobs]


def _load_connector(folder: Path, device: torch.device, dtype: torch.dtype) -> BidirectionalConnector:
    config = read_json(folder / "config.json")
    connector = materialize(build_empty(lambda: BidirectionalConnector(config)), device, dtype)
    connector.rebuild_rotary(device)
    load_strict(connector, folder, unused=BidirectionalConnector.UNUSED_KEYS)
    check_materialized(connector, folder.name)
    return connector


def _mlp_widths(folder: Path, cfg: ImageGenConfig) -> tuple[int, int] | None:
    """(hidden, out) of the condition MLP from the checkpoint's shapes; None for an identity MLP."""
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise CheckpointError(f"{folder} must hold one safetensors file, found {[f.name for f in files]}")
    with SafetensorsFile(files[0]) as f:
        shapes = {name: info.shape for name, info in f.tensors.items()}
    if cfg.use_identity_mlp:
        return None
    if "mlp.fc1.weight" not in shapes or "mlp.fc2.weight" not in shapes:
        raise CheckpointError(
            f"{files[0]} lacks the condition MLP (mlp.fc1 / mlp.fc2) that mlp/config.json implies"
        )
    return (shapes["mlp.fc1.weight"][0], shapes["mlp.fc2.weight"][0])


def _load_heads(
    folder: Path,
    cfg: ImageGenConfig,
    llm_hidden: int,
    connector_hidden: int,
    device: torch.device,
    dtype: torch.dtype,
) -> GenerationHeads:
    if connector_hidden <= 0:
        raise CheckpointError(f"{folder.parent}/connector/config.json needs a positive hidden_size")
    widths = _mlp_widths(folder, cfg)
    return load_part(
        lambda: GenerationHeads(cfg, llm_hidden, connector_hidden, widths), folder, device, dtype
    )
