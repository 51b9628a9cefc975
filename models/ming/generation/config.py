"""Ming image-generation heads: which ones a checkpoint has, and their settings.

A checkpoint root holds them beside the thinker: `mlp/` (query tokens, proj_in / proj_out, the
condition MLP; `config.json` in 2.0), `connector/` (a Qwen2 causal-LM folder, run bidirectionally),
`transformer/`, `vae/`, `scheduler/` (diffusers folders). No `mlp/`: the model has no image output.
The variant comes from the checkpoint's own config, never from a folder name: `mlp/config.json`
`dit_type` ("zimage": Ming-flash-omni 2.0; "sd3": Preview / v1.5, also what upstream assumes when the
key or the file is absent), cross-checked against `transformer/config.json` `_class_name`.
Defaults per variant are upstream `generate()`'s: 2.0 = 30 steps, guidance 2.0, image guidance 1.0,
1024 tier; Preview = 30 steps, guidance 5.0, image guidance 2.0, 512 x 512.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError

PARTS = ("mlp", "connector", "transformer", "vae", "scheduler")
DIT_CLASSES = {"zimage": "ZImageTransformer2DModel", "sd3": "SD3Transformer2DModel"}
PREVIEW_SCALES = (4, 8, 16)  # upstream hard-codes them where mlp/config.json does not say
PREVIEW_CONDITION_DIM = 2048


@dataclass(frozen=True)
class VariantDefaults:
    """What a request that leaves a setting unset gets (upstream `generate()` defaults)."""

    steps: int
    guidance_scale: float
    image_guidance_scale: float
    tier: int  # size tier of the default square image and of edits without a requested size


DEFAULTS = {
    "zimage": VariantDefaults(steps=30, guidance_scale=2.0, image_guidance_scale=1.0, tier=1024),
    "sd3": VariantDefaults(steps=30, guidance_scale=5.0, image_guidance_scale=2.0, tier=512),
}


@dataclass(frozen=True)
class ImageGenConfig:
    """`mlp/config.json` of a checkpoint with image-generation heads (upstream defaults filled in)."""

    dit_type: str  # "zimage" | "sd3"
    scales: tuple[int, ...]  # query-token scales; only the last one conditions the DiT
    condition_dim: int  # diffusion_c_input_dim: proj_out's width, the condition MLP's input
    use_identity_mlp: bool  # Z-Image: condition fed to the DiT as it is (no ToClipMLP)
    text_encoder_norm: bool  # Z-Image: F.normalize(c) * 1000 before the MLP

    @property
    def defaults(self) -> VariantDefaults:
        return DEFAULTS[self.dit_type]

    @property
    def num_queries(self) -> int:
        return sum(s * s for s in self.scales)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageGenConfig:
        dit_type = data.get("dit_type", "sd3")
        if dit_type not in DIT_CLASSES:
            supported = ", ".join(DIT_CLASSES)
            raise ValueError(
                f"mlp/config.json dit_type {dit_type!r} is not supported (supported: {supported})"
            )
        scales = data.get("img_gen_scales", PREVIEW_SCALES)
        if (
            not isinstance(scales, list | tuple)
            or not scales
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in scales)
        ):
            raise ValueError(f"mlp/config.json img_gen_scales must be positive integers, got {scales!r}")
        dim = data.get("diffusion_c_input_dim", PREVIEW_CONDITION_DIM)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"mlp/config.json diffusion_c_input_dim must be a positive integer, got {dim!r}")
        flags = {}
        for key in ("use_identity_mlp", "text_encoder_norm"):
            flags[key] = data.get(key, False)
            if not isinstance(flags[key], bool):
                raise ValueError(f"mlp/config.json {key} must be true or false, got {flags[key]!r}")
        return cls(dit_type, tuple(scales), dim, **flags)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def image_generation_config(root: str | Path) -> ImageGenConfig | None:
    """The checkpoint's image-generation config, or None when it has no heads (no `mlp/` folder).

    A checkpoint that has `mlp/` must have every other part, and its DiT must be the variant's.
    """
    root = Path(root)
    if not (root / "mlp").is_dir():
        return None
    missing = [p for p in PARTS if not (root / p).is_dir()]
    if missing:
        raise CheckpointError(f"{root} has image-generation heads (mlp/) but lacks {', '.join(missing)}/")
    path = root / "mlp" / "config.json"
    try:
        cfg = ImageGenConfig.from_dict(read_json(path) if path.is_file() else {})
    except ValueError as exc:
        raise CheckpointError(f"{root}: {exc}") from None
    dit_class = read_json(root / "transformer" / "config.json").get("_class_name")
    if dit_class != DIT_CLASSES[cfg.dit_type]:
        raise CheckpointError(
            f"{root}/transformer/config.json is a {dit_class!r}, but mlp/config.json dit_type "
            f"{cfg.dit_type!r} needs a {DIT_CLASSES[cfg.dit_type]}"
        )
    return cfg
