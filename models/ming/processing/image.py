"""Images: bytes -> RGB picture -> Qwen2-VL patches (`pixel_values`, `image_grid_thw`) for the Ming ViT.

Flow: `open_image` (Pillow: header-size check before any decoding, EXIF orientation, RGB) ->
`pre_resize` (Ming's fetch step: a first smart resize to multiples of 28 within [4, 1024]·28² pixels;
2.0: multiples of 32 within [4, 16384]·32²) -> `VisionPatcher` (transformers' Qwen2VLImageProcessor:
smart resize to [min, max] pixels, bicubic, rescale, CLIP mean/std, 2x2-merge-ordered patches of
3·2·14·14 = 1176 values (2.0: 3·2·16·16 = 1536), one image = t 1).
`image_grid` predicts the grid of a picture of a given size without touching pixels.

Dimension legend: N = patches of all images, P = 3·temporal_patch·patch² (1176; 2.0: 1536), (t, h, w)
= grid in patches (h, w count 14-px patches, 16-px in 2.0; LLM tokens = t·h·w / merge²).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from models.ming.processing.errors import part_error

# Ming's processor defaults (preprocessor_config.json of the flash checkpoints; spec A.11).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageConfig:
    """How pictures become patches, and which pictures are refused. Invalid values raise ValueError."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 100 * 28 * 28  # 78400: the image processor's bounds
    max_pixels: int = 2560 * 28 * 28  # 2007040
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    # Ming's fetch_image pre-resize (factor 28, [4, 1024]·28² pixels); None turns it off.
    fetch_min_pixels: int | None = 4 * 28 * 28
    fetch_max_pixels: int | None = 1024 * 28 * 28
    # 2.0's fetch rounds each side to at least one factor before checking the pixel bounds.
    fetch_at_least_factor: bool = False
    # Refusals: decompression bombs (read from the header before decoding), specks, slivers.
    max_input_pixels: int = 100_000_000
    min_side: int = 14  # smaller than one ViT patch: there is nothing to see
    max_aspect_ratio: float = 200.0  # the Qwen2-VL resize is undefined beyond this
    apply_exif_orientation: bool = True

    def __post_init__(self) -> None:
        for name in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_input_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"max_pixels ({self.max_pixels}) must be >= min_pixels ({self.min_pixels})")
        fetch = (self.fetch_min_pixels, self.fetch_max_pixels)
        if (fetch[0] is None) != (fetch[1] is None) or (fetch[0] is not None and fetch[1] < fetch[0]):
            raise ValueError(
                f"fetch_min_pixels/fetch_max_pixels must both be None or min <= max, got {fetch}"
            )
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must hold 3 values (R, G, B), got {getattr(self, name)}")
        if self.min_side < 1 or self.max_aspect_ratio < 1:
            raise ValueError(
                f"min_side and max_aspect_ratio must be >= 1, got {self.min_side}, {self.max_aspect_ratio}"
            )

    @property
    def factor(self) -> int:
        """Sides are resized to multiples of this: one merged LLM token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size


def smart_resize(
    height: int,
    width: int,
    factor: int,
    min_pixels: float,
    max_pixels: float,
    at_least_factor: bool = False,
) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, scaled into [min_pixels, max_pixels] pixels.

    The Qwen2-VL rule (spec A.11): round each side; if too many pixels, shrink both by the same
    ratio and floor; if too few, grow and ceil. Aspect ratios above 200 raise ValueError.
    `at_least_factor`: a side that rounds to 0 counts as one factor (2.0's fetch_image / fetch_video).
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} is above 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if at_least_factor:
        h_bar, w_bar = max(factor, h_bar), max(factor, w_bar)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fetch_size(height: int, width: int, cfg: ImageConfig) -> tuple[int, int]:
    """The size after Ming's fetch pre-resize (unchanged when it is off)."""
    if cfg.fetch_min_pixels is None:
        return height, width
    low, high, at_least = cfg.fetch_min_pixels, cfg.fetch_max_pixels, cfg.fetch_at_least_factor
    h, w = smart_resize(height, width, cfg.factor, low, high, at_least)
    return max(cfg.factor, h), max(cfg.factor, w)


def image_grid(height: int, width: int, cfg: ImageConfig) -> tuple[int, int, int]:
    """The (t, h, w) patch grid of a height x width picture: fetch pre-resize, then the processor's."""
    h, w = fetch_size(height, width, cfg)
    h, w = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return 1, h // cfg.patch_size, w // cfg.patch_size


def grid_tokens(grid: tuple[int, int, int] | list[int] | torch.Tensor, merge_size: int = 2) -> int:
    """LLM tokens of one image/video grid: t·h·w / merge² (spec A.3)."""
    t, h, w = (int(v) for v in grid)
    return t * h * w // (merge_size * merge_size)


# ---- decoding ------------------------------------------------------------------------------------
def open_image(data: bytes, index: int, cfg: ImageConfig, kind: str = "image") -> Image.Image:
    """Bytes -> an RGB Pillow image; MediaError naming the part for anything unusable.

    Pillow reads only the header in `Image.open`, so the size limit is checked before any pixel
    is decoded (a 100-megapixel PNG of a few hundred bytes never gets to allocate).
    """
    if not data:
        raise part_error(kind, index, "is empty (no bytes)")
    try:
        with warnings.catch_warnings():  # our own limit below replaces Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own, larger limit tripped while reading the header
        raise part_error(
            kind, index, f"has more than {cfg.max_input_pixels:,} pixels (the limit): refused unread"
        ) from None
    except UnidentifiedImageError:
        raise part_error(kind, index, "not a decodable image (no image format Pillow knows)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise part_error(kind, index, f"not a decodable image ({type(exc).__name__}: {exc})") from None
    width, height = img.size
    check_size(width, height, index, cfg, kind)
    try:
        if cfg.apply_exif_orientation:
            img = ImageOps.exif_transpose(img)
        rgb = img.convert("RGB")  # decodes; alpha is dropped, palettes expanded, as Ming does
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise part_error(kind, index, f"cannot be decoded ({type(exc).__name__}: {exc})") from None
    check_size(*rgb.size, index, cfg, kind)  # EXIF may swap the sides
    return rgb


def check_size(width: int, height: int, index: int, cfg: ImageConfig, kind: str = "image") -> None:
    """Refuse bombs, specks and slivers before any work is spent on them."""
    if width * height > cfg.max_input_pixels:
        raise part_error(
            kind,
            index,
            f"is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{cfg.max_input_pixels:,} pixels",
        )
    if min(width, height) < cfg.min_side:
        raise part_error(
            kind, index, f"is {width}x{height} pixels; each side must be at least {cfg.min_side} pixels"
        )
    if max(width, height) / min(width, height) > cfg.max_aspect_ratio:
        raise part_error(
            kind,
            index,
            f"is {width}x{height} pixels, an aspect ratio above {cfg.max_aspect_ratio:g}",
        )


def pre_resize(img: Image.Image, cfg: ImageConfig) -> Image.Image:
    """Ming's fetch step: Pillow's default (bicubic) resize to the fetch size; a no-op when it fits."""
    width, height = img.size
    h, w = fetch_size(height, width, cfg)
    return img if (h, w) == (height, width) else img.resize((w, h), Image.Resampling.BICUBIC)


# ---- patches -------------------------------------------------------------------------------------
class VisionPatcher:
    """Pictures -> (pixel_values (N, P) float32, grid_thw (n, 3) int64), via transformers.

    Depends on transformers' `Qwen2VLImageProcessor` (its Pillow backend, so no torchvision) because
    Ming's own image processor is that algorithm with other min/max pixels (spec A.11): using it
    keeps bicubic resizing, rescale/normalise order and patch order bit-identical to the checkpoint's.
    """

    def __init__(self, cfg: ImageConfig) -> None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.cfg = cfg
        self._hf = Qwen2VLImageProcessorPil(
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
            patch_size=cfg.patch_size,
            temporal_patch_size=cfg.temporal_patch_size,
            merge_size=cfg.merge_size,
            image_mean=list(cfg.image_mean),
            image_std=list(cfg.image_std),
        )

    def __call__(self, pictures: list[Image.Image], resize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Each picture as one image (t = 1, the frame repeated over the temporal patch)."""
        out: Any = self._hf(images=pictures, do_resize=resize, return_tensors="np")
        pixel_values = torch.from_numpy(np.ascontiguousarray(out["pixel_values"], dtype=np.float32))
        return pixel_values, torch.from_numpy(np.asarray(out["image_grid_thw"], dtype=np.int64))


def process_images(
    images: list[bytes], cfg: ImageConfig, patcher: VisionPatcher
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw image parts -> (pixel_values (N, P), image_grid_thw (n, 3)); MediaError names a bad part."""
    decoded = [open_image(data, i, cfg) for i, data in enumerate(images)]
    pixel_values, grid = patcher([pre_resize(img, cfg) for img in decoded])
    for i, (img, thw) in enumerate(zip(decoded, grid.tolist(), strict=True)):
        expected = image_grid(img.height, img.width, cfg)
        if tuple(thw) != expected:  # the formula and transformers disagree: a bug, not a user error
            raise RuntimeError(f"image {i + 1}: grid {tuple(thw)} != the predicted {expected}")
    return pixel_values, grid


__all__ = [
    "ImageConfig",
    "VisionPatcher",
    "grid_tokens",
    "image_grid",
    "open_image",
    "process_images",
    "smart_resize",
]
