"""Int8 weight-only quantization (`quantization="int8"`): weights stored as int8 with one float32
scale per output row, activations and accumulation in the compute dtype.

Why: a CPU decode step reads every active weight once, so its time is the bytes it reads; int8 reads
a quarter of fp32's (half of bf16's). Symmetric per-row: s = max|W[o, :]| / 127, q = round(W / s),
so |W - q s| <= s / 2 element-wise; routers, norms and the embedding stay in float (they are small,
and routing decides which experts run at all).
Products: inside a compiled decode graph (engine.decode_graph) the few-row product is the reduction
sum_in(x * q) * s, which inductor fuses into one loop that reads the int8 bytes and converts them in
registers (engine.layers.matvec): 15-20 GB/s of int8 here, 4x fp32's elements per second. Eager,
the product is F.linear against the weight converted to the compute dtype (exact: |q| <= 127), with
the row scales applied to the output. torch's CPU int8 weight-only kernel `aten._weight_int8pack_mm`
(what torch.ao / torchao int8 weight-only lower to on CPU) measured no faster than fp32 F.linear at
one row and 25x slower at 64 rows on the AMD EPYC here (bench/RESULTS.md), so it is not used.
`int8_linear_native` is the readable twin. Quantization happens after loading, module by module, so
the peak is the float model.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from engine.layers.matvec import linear_as_reduction, use_reduction

INT8_MAX = 127


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [..., out, in] (float) -> (q int8 [..., out, in], scale float32 [..., out]), symmetric per row."""
    wf = w.float()
    scale = wf.abs().amax(-1).clamp_min(torch.finfo(torch.float32).tiny) / INT8_MAX  # (..., out)
    q = torch.round(wf / scale[..., None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def int8_parameters(w: torch.Tensor) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """`quantize_rows(w)` as the two frozen parameters a module holds (weight, scale)."""
    q, scale = quantize_rows(w)
    return torch.nn.Parameter(q, requires_grad=False), torch.nn.Parameter(scale, requires_grad=False)


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale[..., None]).to(dtype)


def int8_linear_native(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., in] @ (q s)^T (+ bias): dequantise, then F.linear (the reference)."""
    return F.linear(x, dequantize_rows(q, scale, x.dtype), bias)


def int8_linear(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [T, in] (or [..., in]) times the int8 weight q [out, in] with row scales [out] (+ bias)."""
    if use_reduction(x):  # compiled few-row step: one fused loop over the int8 bytes
        y = linear_as_reduction(x, q.to(x.dtype)) * scale.to(x.dtype)
    else:  # q converts exactly; the scales apply per output column of y
        y = F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)
    return y if bias is None else y + bias


def quantize_model(model: torch.nn.Module) -> int:
    """After loading: every module that can hold its weights as int8 (the linears, lm_head included,
    and the stacked experts) does; FP8-kept layers stay FP8. Returns how many modules changed."""
    changed = 0
    for module in model.modules():
        if hasattr(module, "quantize_int8") and getattr(module, "fp8_block", None) is None:
            module.quantize_int8()
            changed += 1
    return changed
