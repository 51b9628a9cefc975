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


# ---- FP8 weights kept as they are (GPU) ---------------------------------------------------------
def quantize_rows(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [M, K] -> (float8 [M, K], scale float32 [M, K / group]): one scale per row and
    `group` columns (dynamic, as `activation_scheme: dynamic` means)."""
    m, k = x.shape
    groups = x.float().view(m, k // group, group)
    scale = (groups.abs().amax(-1) / FP8_MAX).clamp(min=1e-12)  # (M, K/group)
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(m, k), scale


def fp8_linear_native(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Readable twin: y = x W^T (+ b) with W dequantised from its FP8 blocks for this call."""
    return torch.nn.functional.linear(x, dequantize(weight, scale_inv, block, dtype=x.dtype), bias)


def _scaled_mm(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, layout: str) -> torch.Tensor:
    """x [M, K] (bf16) x FP8 weight [N, K] with 128x128 block scales -> [M, N] in x's dtype, through
    torch's block-scaled FP8 GEMM (activations quantised per 1x128 group)."""
    from torch.nn.functional import ScalingType, scaled_mm

    xq, xs = quantize_rows(x, 128)
    if layout == "outer-major":  # scales stored transposed (column-major), as some kernels require
        xs = xs.t().contiguous().t()
    return scaled_mm(
        xq,
        weight.t(),
        xs,
        ScalingType.BlockWise1x128,
        scale_inv,
        ScalingType.BlockWise128x128,
        output_dtype=x.dtype,
    )


_FAST: dict[str, str | None] = {}  # device -> scale layout that works there, None: use the twin


def _fast_layout(device: torch.device) -> str | None:
    """Once per device: does the block-scaled FP8 GEMM run here and agree with the twin? Probed on a
    small problem (both scale layouts torch may expect); a device where it does not gets the twin."""
    key = str(device)
    if key not in _FAST:
        _FAST[key] = None
        if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(64, 256, device=device, generator=gen).to(torch.bfloat16)
            w, s = quantize(torch.randn(384, 256, device=device, generator=gen), (128, 128))
            want = fp8_linear_native(x, w, s, (128, 128), None).float()
            for layout in ("row-major", "outer-major"):
                try:
                    got = _scaled_mm(x, w, s, layout).float()
                except (RuntimeError, ValueError, TypeError):
                    continue
                if (got - want).abs().max() <= 0.05 * want.abs().max():
                    _FAST[key] = layout
                    break
    return _FAST[key]


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T (+ b) for an FP8 weight kept with its block scales: torch's scaled FP8 GEMM on a
    GPU that has it (128x128 blocks, K and N multiples of 128), else `fp8_linear_native`."""
    lead, k = x.shape[:-1], x.shape[-1]
    n = weight.shape[0]
    if block == (128, 128) and k % 128 == 0 and n % 128 == 0 and x.dtype == torch.bfloat16 and x.numel():
        layout = _fast_layout(x.device)
        if layout is not None:
            y = _scaled_mm(x.reshape(-1, k), weight, scale_inv, layout).view(*lead, n)
            return y if bias is None else y + bias
    return fp8_linear_native(x, weight, scale_inv, block, bias)
