"""Image sizes the Ming DiTs run at: a requested (height, width) -> the size bucket of a resolution tier.

The tables are the upstream `bailingmm_utils.process_ratio` ones (aspect ratio h/w -> [h, w], multiples
of 32 / 64): tiers 512, 672 and 1024. `process_ratio(h, w, highres)` is the upstream function (the
tier nearest `highres`, then the bucket nearest the ratio; `resize_size` is upstream's final
LANCZOS size, kept for parity). `snap_size` is what the service does with a request: the tier
nearest the requested area (or the variant's default tier), the bucket nearest its ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_RATIOS_512_1024 = (
    "0.25", "0.26", "0.27", "0.28", "0.32", "0.33", "0.35", "0.4", "0.42", "0.48", "0.5", "0.52",
    "0.57", "0.6", "0.68", "0.72", "0.78", "0.82", "0.88", "0.94", "1.0", "1.07", "1.13", "1.21",
    "1.29", "1.38", "1.46", "1.67", "1.75", "2.0", "2.09", "2.4", "2.5", "2.89", "3.0", "3.11",
    "3.62", "3.75", "3.88", "4.0",
)  # fmt: skip
# (h, w) of the 1024 tier, in the order of _RATIOS_512_1024; the 512 tier is the same halved.
_SIZES_1024 = (
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664),
    (640, 1600), (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280),
    (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024),
    (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832), (1280, 768),
    (1344, 768), (1408, 704), (1472, 704), (1536, 640), (1600, 640), (1664, 576), (1728, 576),
    (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
)  # fmt: skip
_TABLE_672 = {
    "0.28": (352, 1280), "0.32": (384, 1184), "0.38": (416, 1088), "0.44": (448, 1024),
    "0.52": (480, 928), "0.57": (512, 896), "0.65": (544, 832), "0.75": (576, 768),
    "0.83": (608, 736), "0.91": (640, 704), "1.00": (672, 672), "1.10": (704, 640),
    "1.21": (736, 608), "1.33": (768, 576), "1.39": (800, 576), "1.53": (832, 544),
    "1.69": (864, 512), "1.75": (896, 512), "1.93": (928, 480), "2.00": (960, 480),
    "2.21": (992, 448), "2.29": (1024, 448), "2.54": (1056, 416), "2.62": (1088, 416),
    "2.69": (1120, 416), "3.00": (1152, 384), "3.08": (1184, 384), "3.17": (1216, 384),
    "3.55": (1248, 352), "3.64": (1280, 352),
}  # fmt: skip
TIERS: dict[int, dict[str, tuple[int, int]]] = {
    512: {r: (h // 2, w // 2) for r, (h, w) in zip(_RATIOS_512_1024, _SIZES_1024, strict=True)},
    672: _TABLE_672,
    1024: dict(zip(_RATIOS_512_1024, _SIZES_1024, strict=True)),
}
# The ratio range every tier covers (h / w); a request outside it cannot be honoured by any bucket.
MIN_RATIO, MAX_RATIO = 0.25, 4.0


def nearest_tier(highres: float) -> int:
    """The tier nearest `highres` (upstream: ties go to the smaller tier)."""
    return min(TIERS, key=lambda tier: abs(tier - highres))


def bucket(height: float, width: float, tier: int) -> tuple[int, int]:
    """The (h, w) of `tier` whose ratio is nearest height / width (first of equals, as upstream)."""
    table = TIERS[tier]
    ratio = height / width
    closest = min(table, key=lambda r: abs(float(r) - ratio))
    return table[closest]


def process_ratio(ori_h: int, ori_w: int, highres: int | bool | None = 512) -> tuple[list[int], list[int]]:
    """Upstream `process_ratio`: (closest_size [h, w], resize_size [h, w]) for an image of ori_h x ori_w."""
    if highres is None or highres is False:
        highres = 512
    elif highres is True:
        highres = 1024
    closest = list(bucket(ori_h, ori_w, nearest_tier(highres)))
    if closest[0] / ori_h > closest[1] / ori_w:
        resize = [closest[0], int(ori_w * closest[0] / ori_h)]
    else:
        resize = [int(ori_h * closest[1] / ori_w), closest[1]]
    return closest, resize


@dataclass(frozen=True)
class SnappedSize:
    height: int
    width: int
    tier: int


def snap_size(
    height: int | None, width: int | None, default_tier: int, reference: tuple[int, int] | None = None
) -> SnappedSize:
    """The bucket a request runs at.

    Text-to-image: the requested ratio in the tier nearest sqrt(h * w) (no size: the default tier's
    square). Editing (`reference` = the reference image's (h, w)): the reference's ratio, in the tier
    nearest the requested area if one was given, else the default tier (upstream sizes an edit by its
    reference). Raises ValueError for sizes no bucket can honour.
    """
    if (height is None) != (width is None):
        raise ValueError("width and height go together: set both or neither")
    if height is not None and (height <= 0 or width <= 0):
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    tier = default_tier if height is None else nearest_tier(math.sqrt(height * width))
    ratio_h, ratio_w = reference if reference is not None else (height or 1, width or 1)
    ratio = ratio_h / ratio_w
    if reference is None and not MIN_RATIO <= ratio <= MAX_RATIO:
        raise ValueError(f"the aspect ratio height/width = {ratio:.3g} is outside [{MIN_RATIO}, {MAX_RATIO}]")
    h, w = bucket(ratio_h, ratio_w, tier)
    return SnappedSize(h, w, tier)
