"""Block-quantised FP8 weights: the layout of the FP8 releases (Ling-1T-FP8, DeepSeek-V3 style).

config.json carries `quantization_config = {"quant_method": "fp8", "fmt": "e4m3",
"weight_block_size": [bo, bi], "activation_scheme": "dynamic"}`. Each quantised linear weight
`X.weight` [O, I] is stored as float8_e4m3fn next to `X.weight_scale_inv` [ceil(O/bo), ceil(I/bi)]
float32, and the real weight is

    W[o, i] = float(X.weight[o, i]) * X.weight_scale_inv[o // bo, i // bi]

(the name says "inverse" because the quantiser divided by it). Embeddings, norms, routers and
lm_head stay in their float dtype. `dequantize` also takes a part of a weight (a tensor-parallel
slice starting at `origin`) together with the scale rows/columns that cover it. `quantize` is the
inverse used by the demo/test writer: per block, scale = amax / 448 (e4m3's largest finite value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
SCALE_SUFFIX = "_scale_inv"  # X.weight -> X.weight_scale_inv


@dataclass(frozen=True)
class Fp8Scheme:
    """The checkpoint's FP8 layout: weight blocks of `block` = (rows, cols)."""

    block: tuple[int, int]
    activation_scheme: str = "dynamic"


def fp8_scheme(config: dict[str, Any]) -> Fp8Scheme | None:
    """config.json's `quantization_config` -> Fp8Scheme, None when the checkpoint is not quantised.

    Raises ValueError for a quantisation method or layout this engine cannot load.
    """
    q = config.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise ValueError("quantization_config must be a JSON object")
    method = q.get("quant_method")
    if method != "fp8":
        raise ValueError(f"quantization_config.quant_method {method!r} is not supported (supported: 'fp8')")
    fmt = q.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"quantization_config.fmt {fmt!r} is not supported (supported: 'e4m3')")
    block = q.get("weight_block_size")
    if (
        not isinstance(block, list)
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
    ):
        raise ValueError(
            f"quantization_config.weight_block_size must be two positive ints (per-block FP8), got {block!r}"
        )
    scheme = q.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise ValueError(f"quantization_config.activation_scheme {scheme!r} is not supported (use 'dynamic')")
    return Fp8Scheme((block[0], block[1]), scheme)


def scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, int]:
    """Shape of the `weight_scale_inv` that goes with a 2-D weight of `shape`."""
    if len(shape) != 2:
        raise ValueError(f"block-FP8 weights are 2-D, got shape {list(shape)}")
    return math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1])


def scale_span(start: int, length: int, block: int) -> tuple[int, int]:
    """The scale rows (start, count) that cover weight rows start..start+length-1."""
    first = start // block
    return first, math.ceil((start + length) / block) - first


def dequantize(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    origin: tuple[int, int] = (0, 0),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """FP8 `weight` [o, i] (rows origin[0].., cols origin[1].. of the full weight) times its scales.

    `scale_inv` holds the scale rows / columns from origin // block on, covering the part.
    """
    o, i = weight.shape
    r0, c0 = origin[0] % block[0], origin[1] % block[1]  # offset inside the first block
    rows = (torch.arange(o, device=weight.device) + r0) // block[0]  # (o,) scale row of each weight row
    cols = (torch.arange(i, device=weight.device) + c0) // block[1]  # (i,)
    scales = scale_inv.float()[rows][:, cols]  # (o, i)
    return (weight.float() * scales).to(dtype)


def quantize(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A float weight [O, I] -> (float8_e4m3fn [O, I], scale_inv float32 [ceil(O/bo), ceil(I/bi)])."""
    o, i = weight.shape
    so, si = scale_shape((o, i), block)
    padded = weight.new_zeros(so * block[0], si * block[1], dtype=torch.float32)
    padded[:o, :i] = weight.float()
    blocks = padded.view(so, block[0], si, block[1])  # (so, bo, si, bi)
    amax = blocks.abs().amax(dim=(1, 3))  # (so, si)
    scale_inv = (amax / FP8_MAX).clamp(min=1e-12)  # (so, si)
    q = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
    return q.view_as(padded)[:o, :i].to(FP8_DTYPE).contiguous(), scale_inv
