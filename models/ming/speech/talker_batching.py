"""Continuous batching for the talker: merging a batch of newcomers (past their prefill step) into the
running batch, and cutting cache columns nobody uses, on transformers' `DynamicCache`.

Rows keep their own positions (every row's RoPE was applied at its own positions), so a row's cached
keys and values are valid wherever they sit in the cache: merging left-pads the shorter cache with
zeros and its attention mask with 0, then stacks the rows. After rows leave, cache columns that no
remaining row attends to are cut from the left.
Legend: B = rows, K = KV heads, S = cached positions, D = head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def mergeable(cache: DynamicCache) -> bool:
    """True when every layer is a plain full-attention layer (a sliding-window layer keeps only its
    window, so left padding would change what it drops)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def pad_left(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Zeros before `x` along `dim` (a negative index) up to `length`."""
    extra = length - x.shape[dim]
    if extra <= 0:
        return x
    return F.pad(x, [0, 0] * (-dim - 1) + [extra, 0])  # F.pad lists the last dim first


def merge_caches(into: DynamicCache, other: DynamicCache) -> None:
    """`into` gains the rows of `other`, the shorter side left-padded with zeros: per layer keys and
    values [B1, K, S1, D] + [B2, K, S2, D] -> [B1 + B2, K, max(S1, S2), D]."""
    if not (mergeable(into) and mergeable(other)):
        raise ValueError("only caches of full-attention layers can be merged")
    if len(into.layers) != len(other.layers):
        raise ValueError(f"caches of {len(into.layers)} and {len(other.layers)} layers")
    for a, b in zip(into.layers, other.layers, strict=True):
        if not (a.is_initialized and b.is_initialized):
            raise ValueError("both caches must hold their prefill")
        length = max(a.keys.shape[-2], b.keys.shape[-2])
        a.keys = torch.cat([pad_left(a.keys, length, -2), pad_left(b.keys, length, -2)])
        a.values = torch.cat([pad_left(a.values, length, -2), pad_left(b.values, length, -2)])


def merge_masks(a: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """Masks [B1, L1] and [B2, L2] (each over its cache plus the pending input) left-padded with 0 to
    `length` and stacked: [B1 + B2, length]."""
    return torch.cat([pad_left(a, length, -1), pad_left(b, length, -1)])


def trim_unused(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Cut the leading cache columns that no row attends to; returns the mask [B, S + 1] cut alike."""
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else 0
    if start == 0 or not mergeable(cache):
        return mask
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
    return mask[:, start:]
