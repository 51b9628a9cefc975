"""Paged KV cache storage and the attention context that reads and writes it.

Legend: L = layers, N = blocks, B = block_size, Hkv = KV heads, D = head_dim, T = new tokens in the
step, S = context length of one sequence, R = sequences in the step.
Storage: k, v [L, N, B, Hkv, D]. A sequence's position p lives in slot block_table[p // B] * B + p % B.
Per step the model runner builds a `PagedContext` (slot of each new token, each sequence's block
table and lengths). `attend` scatters the new k/v into their slots, then:
- decode rows (one new token each) attend in one batched call over their gathered, padded blocks;
- prefill rows (chunks of any length) attend one sequence at a time (causal within the chunk, or
  block-causal for a diffusion sequence: `block_lengths[i]` = its block length B, a token then sees
  every cached or new token of its own and earlier blocks).
Both paths equal the contiguous-cache attention (`engine.layers.attention`); tests check it.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from engine.config import ModelRuntimeConfig
from engine.layers.attention import attention, block_causal_attention


class PagedKVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = zeros_on_demand(shape, dtype, device)  # (L, N, B, Hkv, D)
        self.v = zeros_on_demand(shape, dtype, device)  # (L, N, B, Hkv, D)
        self.num_blocks, self.block_size = num_blocks, block_size

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy every layer's K and V of block src into block dst, for each (src, dst)."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], device=self.k.device)  # (C,)
        dst = torch.tensor([p[1] for p in pairs], device=self.k.device)  # (C,)
        self.k[:, dst] = self.k[:, src]  # (L, C, B, Hkv, D)
        self.v[:, dst] = self.v[:, src]

    @staticmethod
    def bytes_per_block(
        num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * dtype.itemsize


@dataclass(frozen=True)
class KVCacheSpec:
    """How big a KV cache to allocate: `num_blocks` if set, else as many blocks of `block_size` as
    fit in `nbytes`. None: 85% of the free memory on a GPU; on the CPU what `CPU_FULL_CONTEXTS`
    sequences of `max_model_len` tokens need, at most 1 GiB (a demo model's 4k context then takes
    64 MiB, not the 1 GiB a real model's pool is capped at)."""

    block_size: int = 16
    nbytes: int | None = None
    num_blocks: int | None = None
    max_model_len: int | None = None  # None: the model's max_position

    def blocks_for(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        max_model_len: int | None = None,
    ) -> int:
        if self.num_blocks is not None:
            return self.num_blocks
        per_block = PagedKVCache.bytes_per_block(num_layers, self.block_size, num_kv_heads, head_dim, dtype)
        budget = self.nbytes
        if budget is None and device.type == "cuda":
            budget = int(torch.cuda.mem_get_info(device)[0] * 0.85)
        elif budget is None:
            budget = _DEFAULT_CPU_KV_BYTES
            if max_model_len:
                contexts = CPU_FULL_CONTEXTS * -(-max_model_len // self.block_size)
                budget = min(budget, contexts * per_block)
        return max(1, budget // per_block)

    def allocate(
        self,
        rt: ModelRuntimeConfig,
        dtype: torch.dtype,
        device: torch.device,
        agree: Callable[[int], int] = lambda blocks: blocks,
    ) -> PagedKVCache:
        """The paged cache of a model with runtime `rt`; over several ranks `agree` (the group's
        `agree_min`) gives every rank the same block count, the smallest any of them can hold."""
        context = min(self.max_model_len or rt.max_position, rt.max_position)
        blocks = agree(self.blocks_for(rt.num_layers, rt.num_kv_heads, rt.head_dim, dtype, device, context))
        return PagedKVCache(
            rt.num_layers, blocks, self.block_size, rt.num_kv_heads, rt.head_dim, dtype, device
        )


_DEFAULT_CPU_KV_BYTES = 1 << 30
CPU_FULL_CONTEXTS = 8  # full-length sequences a default CPU pool holds (below its 1 GiB cap)


def zeros_on_demand(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A zero tensor; on the CPU backed by anonymous memory (mmap), whose pages the kernel maps in as
    they are first written, so a KV pool costs resident memory for the blocks in use, not its size
    (`torch.zeros` writes every byte up front: a 1 GiB pool was 1 GiB of RSS in every idle worker)."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    count = math.prod(shape)
    memory = mmap.mmap(-1, max(count * dtype.itemsize, 1))  # zero-filled by the kernel
    return torch.frombuffer(memory, dtype=dtype, count=count).view(shape)  # holds `memory`


@dataclass
class PagedContext:
    """One step's view of the paged cache: which slots the new tokens go to, what each row attends to."""

    cache: PagedKVCache
    slots: torch.Tensor  # (T,) flat slot index of each new token
    q_lens: list[int]  # new tokens per sequence (sum = T)
    ctx_lens: list[int]  # tokens each sequence attends to after this step (cached + new)
    block_tables: list[list[int]]
    block_lengths: list[int | None] | None = None  # per sequence: diffusion block length, None: causal

    def __post_init__(self) -> None:
        self.starts = [0]
        for n in self.q_lens:
            self.starts.append(self.starts[-1] + n)
        self.decode_rows = [i for i, n in enumerate(self.q_lens) if n == 1]
        self.prefill_rows = [i for i, n in enumerate(self.q_lens) if n > 1]
        self._decode: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._prefill_idx: dict[int, torch.Tensor] = {}

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] -> [T, H, D]."""
        kc, vc = self.cache.k[layer], self.cache.v[layer]  # (N, B, Hkv, D)
        kc.view(-1, *kc.shape[2:]).index_copy_(0, self.slots, k)  # write new k/v into their slots
        vc.view(-1, *vc.shape[2:]).index_copy_(0, self.slots, v)
        if not self.prefill_rows:
            return self._attend_decode(q, kc, vc)
        out = torch.empty_like(q)
        if self.decode_rows:
            tokens = self._decode_inputs(q.device)[0]
            out[tokens] = self._attend_decode(q[tokens], kc, vc)
        for i in self.prefill_rows:
            a, b, s = self.starts[i], self.starts[i + 1], self.ctx_lens[i]
            idx = self._prefill_blocks(i, q.device)
            keys, values = _gather(kc, idx, s), _gather(vc, idx, s)  # (S, Hkv, D)
            block = self.block_lengths[i] if self.block_lengths is not None else None
            if block is None:
                out[a:b] = attention(q[a:b], keys, values, past=s - (b - a))
            else:
                out[a:b] = block_causal_attention(q[a:b], keys, values, block)
        return out

    def _prefill_blocks(self, row: int, device: torch.device) -> torch.Tensor:
        """Block ids holding prefill row `row`'s context; built once per step, shared by all layers."""
        idx = self._prefill_idx.get(row)
        if idx is None:
            blocks = -(-self.ctx_lens[row] // self.cache.block_size)
            idx = self._prefill_idx[row] = torch.tensor(self.block_tables[row][:blocks], device=device)
        return idx

    def _attend_decode(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
        """Rows with one new token each: one batched attention over their padded block tables."""
        _, h, d = q.shape
        _, tables, mask = self._decode_inputs(q.device)  # (R, M), (R, 1, 1, M*B)
        r = tables.shape[0]
        flat = tables.view(-1)
        keys = kc.index_select(0, flat).view(r, -1, *kc.shape[2:]).transpose(1, 2)  # (R, Hkv, M*B, D)
        values = vc.index_select(0, flat).view(r, -1, *vc.shape[2:]).transpose(1, 2)  # (R, Hkv, M*B, D)
        out = F.scaled_dot_product_attention(
            q[:, :, None, :],
            keys,
            values,
            attn_mask=mask,
            scale=1.0 / math.sqrt(d),
            enable_gqa=h != keys.shape[1],
        )  # (R, H, 1, D)
        return out[:, :, 0, :]

    def _decode_inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token index, padded block tables, length mask) of the decode rows; built once per step."""
        if self._decode is None:
            bs, rows = self.cache.block_size, self.decode_rows
            lens = [self.ctx_lens[i] for i in rows]
            width = max(-(-s // bs) for s in lens)
            padded = [self.block_tables[i][: -(-s // bs)] for i, s in zip(rows, lens, strict=True)]
            padded = [t + [0] * (width - len(t)) for t in padded]
            tables = torch.tensor(padded, device=device)  # (R, M)
            valid = (
                torch.arange(width * bs, device=device)[None, :] < torch.tensor(lens, device=device)[:, None]
            )
            tokens = torch.tensor([self.starts[i] for i in rows], device=device)
            self._decode = (tokens, tables, valid[:, None, None, :])  # mask (R, 1, 1, M*B)
        return self._decode


def _gather(cache: torch.Tensor, blocks: torch.Tensor, length: int) -> torch.Tensor:
    """One sequence's first `length` cached positions from its blocks: (S, Hkv, D)."""
    return cache.index_select(0, blocks).flatten(0, 1)[:length]
