"""x W^T for the few rows of a decode step, in the form a compiled CPU graph streams fastest.

A batch-1 decode step is a chain of matrix-vector products: every weight is read once, so its speed
is the speed at which the kernels read memory. On the CPUs here torch's eager `F.linear` (MKL sgemv /
oneDNN) reads a one-row product's weight at 7-15 GB/s, against 35-45 GB/s for a plain read with two
threads (bench/RESULTS.md, issue 19). Written as a broadcast multiply and a sum over the input
dimension, the same product is one reduction loop to inductor: it streams W once, vectorised and
split over threads by output row, at ~20 GB/s, with no [out, in] temporary, and it fuses with what
comes before and after it. Eager, that form would materialise the product, so `linear` uses it only
while torch.compile traces (engine.decode_graph), for up to `FEW_ROWS` rows on a CPU; everywhere else
it is `F.linear`, its native twin.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

FEW_ROWS = 4  # past a few rows a GEMM reuses each weight row across the rows; the reduction would not


def use_reduction(x: torch.Tensor) -> bool:
    """True inside a compiled CPU graph for a [T, in] input with T <= FEW_ROWS."""
    return (
        torch.compiler.is_compiling() and x.device.type == "cpu" and x.dim() == 2 and x.shape[0] <= FEW_ROWS
    )


def linear_as_reduction(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [T, in], W [out, in] -> [T, out] as sum_in(x[:, None, :] * W[None]) (exact in any mode)."""
    y = (x[:, None, :] * weight[None]).sum(-1)  # (T, out)
    return y if bias is None else y + bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, or its reduction form inside a compiled CPU graph with few rows."""
    if use_reduction(x):
        return linear_as_reduction(x, weight, bias)
    return F.linear(x, weight, bias)
