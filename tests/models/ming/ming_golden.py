"""The tiny Ming golden set (official Preview thinker, /work/shared/golden/ming-tiny): where it lives,
the processor tensors of each case as `prepare_prompt` keywords, and a model loader for tests."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.layers.base import materialize
from engine.loader import load_weights
from engine.model_loader import read_config
from models.ming.config import MingConfig
from models.ming.model import BailingMM2NativeForConditionalGeneration
from tests.conftest import SHARED

GOLDEN = SHARED / "golden" / "ming-tiny"
TINY = GOLDEN / "tiny-ming"
CASES = ("text", "image", "image_windows", "audio")
MEDIA_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "audio_feats",
    "audio_feats_lengths",
    "audio_placeholder_loc_lens",
)
IMAGE_START, IMAGE_PATCH, VIDEO_START, VIDEO_PATCH, AUDIO_PATCH = 998, 997, 999, 1015, 1008
TOL = 1e-4


def media(tensors: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    """The case's processor tensors, named as `prepare_prompt` takes them."""
    return {key: tensors[f"{case}.{key}"] for key in MEDIA_KEYS if f"{case}.{key}" in tensors}


def build_thinker(
    folder: Path = TINY, dtype: torch.dtype = torch.float32, vision_attn: str = "sdpa"
) -> BailingMM2NativeForConditionalGeneration:
    """Build from config.json, materialise and load strictly through the engine's loader."""
    cfg = MingConfig.from_dict(read_config(Path(folder)))
    model = BailingMM2NativeForConditionalGeneration(cfg, vision_attn)
    materialize(model, dtype, "cpu")
    load_weights(model, folder)
    return model.eval()
