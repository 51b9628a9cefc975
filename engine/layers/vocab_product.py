"""Logits for a few rows: hidden [T, d] x the vocab projection [V, d] -> [T, V], fast on CPU.

On the CPU BLAS here (MKL in torch 2.11, AMD EPYC) `F.linear(x, W)` = x W^T with few rows and a
tall W takes a slow path: 7.2 ms for one row against the 32768 x 512 fp32 bench lm_head (9 GB/s),
and 15-27 ms for 2..8 rows. `W @ X^T` (X with at least two real rows) is a GEMM that streams W at
~22 GB/s: 2.9 ms for one row (padded with a copy of itself), 3.3-10 ms for 2..8 rows. Past ~16
rows the two meet, and at 256 `F.linear` is faster (bench/RESULTS.md, issue 19). So the vocab
projection of decode steps (one row per sequence sampling) takes `W @ X^T` for up to
`FEW_ROWS` float32 rows on a CPU, and `F.linear` otherwise; `vocab_product_native` is the twin.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from engine.layers.matvec import linear_as_reduction, use_reduction

FEW_ROWS = 16  # measured crossover: equal at ~24 rows, F.linear ahead from ~128
TALL = 8192  # only tall projections (vocab-sized); small matrices are faster through F.linear


def vocab_product_native(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight)


def vocab_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [T, d] W^T -> [T, V], through whichever CPU kernel is fast for this T (see the module)."""
    t = x.shape[0]
    if use_reduction(x):  # inside a compiled decode graph (engine.layers.matvec)
        return linear_as_reduction(x, weight)
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or not 0 < t <= FEW_ROWS:
        return vocab_product_native(x, weight)
    if weight.shape[0] < TALL:
        return vocab_product_native(x, weight)
    rows = torch.cat([x, x]) if t == 1 else x  # a one-column product would take the slow GEMV path
    return (weight @ rows.T).T[:t].contiguous()  # (T, V)
