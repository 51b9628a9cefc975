"""Tensor-parallel linears and vocab-parallel embedding / lm_head (one rank's share of each weight).

Legend: N = ranks, r = this rank, T = tokens. Checkpoint weights are [out, in].
- `ColumnParallelLinear`: rows out/N of W -> y holds this rank's output features; no communication.
- `QKVParallelLinear`: the fused [(H + 2 Hkv) D, d] projection; rank r keeps its query heads and the
  KV heads they read (three row ranges of the one checkpoint tensor).
- `RowParallelLinear`: columns in/N of W over this rank's input features -> partial y, summed over
  ranks (all-reduce) unless the caller sums several partials first (`reduce=False`, then the bias is
  added by rank 0 only so the sum counts it once).
- `VocabParallelEmbedding`: rows of the vocab; ids outside the rank's rows give 0, the all-reduce
  fills them in. `ParallelLMHead`: the same split for the output; `logits()` gathers the columns
  on rank 0, the only rank that samples.
Each layer's `weight_targets(prefix)` names the checkpoint keys with the `Shard` this rank reads
(and, for a block-FP8 weight kept as FP8, the blocks of `weight_scale_inv` that go with it).
With one rank every layer computes exactly what the plain `Linear` / `Embedding` does.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from engine.fp8 import scale_shape
from engine.layers.base import Linear, param
from engine.layers.vocab_product import vocab_product
from engine.loader import Shard, WeightTarget
from engine.parallel.group import TensorGroup, current_group
from engine.parallel.split import even_part, part_widths, split_heads, uneven_part


def target(
    dest: torch.Tensor,
    full: tuple[int, ...],
    dim: int,
    ranges: tuple[tuple[int, int], ...],
    owner: object = None,
) -> WeightTarget:
    """A WeightTarget for `dest` = `ranges` along `dim` of a checkpoint tensor of shape `full`
    (no Shard when the ranges are the whole tensor, so a single rank reads it in one go)."""
    whole = ranges == ((0, full[dim]),)
    return WeightTarget(dest, full, None if whole else Shard(dim, ranges), owner)


def block_aligned(ranges: tuple[tuple[int, int], ...], size: int, block: int) -> bool:
    """Can these ranges of a dimension of `size` carry their FP8 scales (whole blocks, or the tensor's
    ragged last block)?"""
    return all(a % block == 0 and (n % block == 0 or a + n == size) for a, n in ranges)


def in_blocks(ranges: tuple[tuple[int, int], ...], block: int) -> tuple[tuple[int, int], ...]:
    return tuple((a // block, math.ceil(n / block)) for a, n in ranges)


class _Sharded:
    """weight_targets of a linear that holds `ranges` along `dim` of an [out, in] checkpoint weight
    and, when it keeps FP8 weights, the blocks of their scales that cover them."""

    weight: torch.Tensor
    weight_scale_inv: torch.Tensor
    bias: torch.Tensor | None
    fp8_block: tuple[int, int] | None
    full: tuple[int, int]
    ranges: tuple[tuple[int, int], ...]
    dim: int

    def fp8_aligned(self, block: tuple[int, int]) -> bool:
        return block_aligned(self.ranges, self.full[self.dim], block[self.dim])

    def weight_targets(self, prefix: str) -> dict[str, WeightTarget]:
        targets = {f"{prefix}.weight": target(self.weight, self.full, self.dim, self.ranges, self)}
        if self.fp8_block is not None:
            scales = scale_shape(self.full, self.fp8_block)
            blocks = in_blocks(self.ranges, self.fp8_block[self.dim])
            targets[f"{prefix}.weight_scale_inv"] = target(
                self.weight_scale_inv, scales, self.dim, blocks, self
            )
        if self.bias is not None:
            bias_ranges = self.ranges if self.dim == 0 else ((0, self.full[0]),)
            targets[f"{prefix}.bias"] = target(self.bias, self.full[:1], 0, bias_ranges)
        return targets


class ColumnParallelLinear(_Sharded, Linear):
    """y[:, rows] = x W[rows]^T (+ b[rows]): this rank's share of the output features."""

    dim = 0

    def __init__(self, in_features: int, out_features: int, bias: bool = False, uneven: bool = False) -> None:
        group = current_group()
        if uneven:
            start, n = uneven_part(out_features, group.size, group.rank)
        else:
            start, n = even_part(out_features, group.size, group.rank, "output width")
        super().__init__(in_features, n, bias)
        self.group, self.full = group, (out_features, in_features)
        self.ranges: tuple[tuple[int, int], ...] = ((start, n),)


class QKVParallelLinear(ColumnParallelLinear):
    """The fused query/key/value projection; this rank's rows are its q heads, then its k, v heads."""

    def __init__(
        self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, bias: bool
    ) -> None:
        group = current_group()
        heads = split_heads(num_heads, num_kv_heads, group.size, group.rank)
        self.heads = heads
        rows = (heads.q_heads + 2 * heads.kv_heads) * head_dim
        Linear.__init__(self, hidden_size, rows, bias)
        self.group, self.full = group, ((num_heads + 2 * num_kv_heads) * head_dim, hidden_size)
        d, k0, kn = head_dim, heads.kv_start * head_dim, heads.kv_heads * head_dim
        self.ranges = (
            (heads.q_start * d, heads.q_heads * d),
            (num_heads * d + k0, kn),
            ((num_heads + num_kv_heads) * d + k0, kn),
        )


class RowParallelLinear(_Sharded, Linear):
    """y = sum over ranks of x[:, cols] W[:, cols]^T, + b once."""

    dim = 1

    def __init__(self, in_features: int, out_features: int, bias: bool = False, reduce: bool = True) -> None:
        group = current_group()
        start, n = even_part(in_features, group.size, group.rank, "input width")
        super().__init__(n, out_features, bias)
        self.group, self.full, self.reduce = group, (out_features, in_features), reduce
        self.ranges: tuple[tuple[int, int], ...] = ((start, n),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group.size == 1:
            return self.project(x, self.bias)
        y = self.project(x)
        if self.reduce:
            y = self.group.all_reduce(y)
            return y if self.bias is None else y + self.bias
        return y if self.bias is None or not self.group.is_first else y + self.bias


def _vocab_logits(
    hidden: torch.Tensor, weight: torch.Tensor, group: TensorGroup, widths: list[int]
) -> torch.Tensor:
    """hidden [T, d] x this rank's vocab rows -> logits [T, V] float32 on every rank."""
    return group.gather_columns(vocab_product(hidden, weight).float(), widths)


class VocabParallelEmbedding(nn.Module):
    """Token id -> row of the embedding [V, d]; rank r holds rows start..start+n-1."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        group = current_group()
        self.group, self.full = group, (num_embeddings, dim)
        self.widths = part_widths(num_embeddings, group.size)
        self.start, n = uneven_part(num_embeddings, group.size, group.rank)
        self.weight = param(n, dim)

    def weight_targets(self, prefix: str) -> dict[str, WeightTarget]:
        return {f"{prefix}.weight": target(self.weight, self.full, 0, ((self.start, self.weight.shape[0]),))}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.group.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        mine = (local >= 0) & (local < self.weight.shape[0])  # (T,)
        rows = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight)  # (T, d)
        return self.group.all_reduce(rows * mine[:, None].to(rows.dtype))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Tied output head: hidden [T, d] -> [T, V] float32 on rank 0 (None on the others)."""
        return _vocab_logits(hidden, self.weight, self.group, self.widths)


class ParallelLMHead(ColumnParallelLinear):
    """The output projection [V, d] split by vocab rows like the embedding; `logits` gathers them."""

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__(hidden_size, vocab_size, uneven=True)
        self.widths = part_widths(vocab_size, self.group.size)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """hidden [T, d] -> [T, V] float32 on rank 0 (None on the others)."""
        if self.fp8_block is not None or self.int8:
            return self.group.gather_columns(self.project(hidden).float(), self.widths)
        return _vocab_logits(hidden, self.weight, self.group, self.widths)
