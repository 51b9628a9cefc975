"""Attention over a KV cache: the model hands in projected q/k/v, a context decides what to attend to.

Legend: T = new tokens in this forward, S = tokens attended to (cached + new), H = query heads,
Hkv = KV heads, D = head_dim, L = layers.
Contexts:
- `NoCacheContext`: one sequence, plain causal attention over its own tokens (scoring, `.logits`).
- `BatchKVContext`: several sequences packed along T; each owns a `SequenceKVCache` (contiguous
  [L, Hkv, S_max, D] tensors). New k/v are written at the sequence's next positions, then its queries
  attend to everything cached so far plus themselves (causal within the new tokens).
- `BlockCausalContext`: one sequence, no cache, block-causal (or fully bidirectional) attention for
  masked-diffusion LMs: `block_causal_attention` (SDPA, bool mask) over keys 0..S-1 for queries at
  the last T positions, so it also covers "prefix K/V + current block(s)".
`attention` (SDPA) has the readable `attention_native` twin, `block_causal_attention` has
`block_causal_attention_native`; tests check they agree.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def attention_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
    """q [T, H, D], k/v [S, Hkv, D] with S = past + T -> out [T, H, D]; explicit matmul + softmax."""
    t, h, d = q.shape
    s, hkv, _ = k.shape
    k = k.repeat_interleave(h // hkv, dim=1)  # (S, H, D)
    v = v.repeat_interleave(h // hkv, dim=1)  # (S, H, D)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(d)  # (H, T, S)
    allowed = torch.arange(s)[None, :] <= past + torch.arange(t)[:, None]  # (T, S)
    scores = scores.masked_fill(~allowed.to(q.device), float("-inf"))
    probs = scores.float().softmax(-1).to(q.dtype)
    return torch.einsum("hts,shd->thd", probs, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
    """Same contract as `attention_native`, through torch's fused scaled_dot_product_attention."""
    t, h, d = q.shape
    s, hkv, _ = k.shape
    qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]  # (1, N, T|S, D)
    mask, causal = None, False
    if t > 1 and past == 0:
        causal = True
    elif t > 1:
        mask = torch.arange(s, device=q.device)[None, :] <= past + torch.arange(t, device=q.device)[:, None]
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, is_causal=causal, scale=1.0 / math.sqrt(d), enable_gqa=h != hkv
    )  # (1, H, T, D)
    return out[0].transpose(0, 1)


class NoCacheContext:
    """One sequence, no cache: causal attention over exactly the tokens of this forward."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, past=0)


class SequenceKVCache:
    """Contiguous K/V of one sequence for all layers: k, v [L, Hkv, S_max, D]; `length` tokens filled."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (num_layers, capacity, num_kv_heads, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)  # (L, S_max, Hkv, D)
        self.v = torch.empty(shape, dtype=dtype, device=device)  # (L, S_max, Hkv, D)
        self.capacity = capacity
        self.length = 0


class BatchKVContext:
    """Sequences packed along T (`q_lens[i]` new tokens each), each with its own SequenceKVCache."""

    def __init__(self, caches: list[SequenceKVCache], q_lens: list[int]) -> None:
        for cache, n in zip(caches, q_lens, strict=True):
            if cache.length + n > cache.capacity:
                raise ValueError(f"KV cache overflow: {cache.length} + {n} > capacity {cache.capacity}")
        self.caches, self.q_lens = caches, q_lens

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        outs = []
        for cache, qs, ks, vs in zip(
            self.caches, q.split(self.q_lens), k.split(self.q_lens), v.split(self.q_lens), strict=True
        ):
            past, end = cache.length, cache.length + qs.shape[0]
            cache.k[layer, past:end] = ks
            cache.v[layer, past:end] = vs
            outs.append(attention(qs, cache.k[layer, :end], cache.v[layer, :end], past))
        return torch.cat(outs)  # (T, H, D)

    def advance(self) -> None:
        """Call once after the forward: the new tokens are now part of each cache."""
        for cache, n in zip(self.caches, self.q_lens, strict=True):
            cache.length += n


def block_causal_mask(t: int, s: int, block_length: int | None, device: torch.device | str) -> torch.Tensor:
    """Bool [T, S]: query i (absolute position p_i = S - T + i) may see key j iff ⌊j/B⌋ <= ⌊p_i/B⌋.

    B = `block_length`; None means every query sees every key (fully bidirectional).
    """
    if block_length is None:
        return torch.ones(t, s, dtype=torch.bool, device=device)
    q_block = torch.arange(s - t, s, device=device) // block_length  # (T,)
    k_block = torch.arange(s, device=device) // block_length  # (S,)
    return k_block[None, :] <= q_block[:, None]  # (T, S)


def _check_block_args(t: int, s: int, block_length: int | None) -> None:
    if t > s:
        raise ValueError(f"block-causal attention needs at least as many keys as queries, got T={t} > S={s}")
    if block_length is not None and block_length <= 0:
        raise ValueError(f"block_length must be positive or None, got {block_length}")


def block_causal_attention_native(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_length: int | None
) -> torch.Tensor:
    """q [T, H, D] at absolute positions S-T..S-1, k/v [S, Hkv, D] at 0..S-1 -> out [T, H, D].

    Readable twin of `block_causal_attention`: explicit matmul + masked softmax.
    """
    t, h, d = q.shape
    s, hkv, _ = k.shape
    _check_block_args(t, s, block_length)
    k = k.repeat_interleave(h // hkv, dim=1)  # (S, H, D)
    v = v.repeat_interleave(h // hkv, dim=1)  # (S, H, D)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(d)  # (H, T, S)
    allowed = block_causal_mask(t, s, block_length, q.device)  # (T, S)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.float().softmax(-1).to(q.dtype)
    return torch.einsum("hts,shd->thd", probs, v)


def block_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_length: int | None
) -> torch.Tensor:
    """Same contract as `block_causal_attention_native`, through SDPA with a bool mask (None: no mask)."""
    t, h, d = q.shape
    s, hkv, _ = k.shape
    _check_block_args(t, s, block_length)
    qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]  # (1, N, T|S, D)
    mask = None if block_length is None else block_causal_mask(t, s, block_length, q.device)  # (T, S)
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, scale=1.0 / math.sqrt(d), enable_gqa=h != hkv
    )  # (1, H, T, D)
    return out[0].transpose(0, 1)


class BlockCausalContext:
    """One sequence, no cache, block-causal attention (masked-diffusion LMs such as LLaDA2).

    Token i (position i of this forward) sees token j iff ⌊j/B⌋ <= ⌊i/B⌋: bidirectional inside a
    block of `block_length` B, causal across blocks. `block_length=None`: fully bidirectional.
    """

    def __init__(self, block_length: int | None) -> None:
        if block_length is not None and (isinstance(block_length, bool) or block_length <= 0):
            raise ValueError(f"block_length must be a positive int or None, got {block_length!r}")
        self.block_length = block_length

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return block_causal_attention(q, k, v, self.block_length)
