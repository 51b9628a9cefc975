"""Attention over the paged KV cache equals the contiguous-cache path, for decode and chunked prefill."""

from __future__ import annotations

import random

import pytest
import torch

from engine.kv_cache import PagedContext, PagedKVCache
from engine.layers.attention import BatchKVContext, SequenceKVCache

H, HKV, D, BS = 4, 2, 8, 4


def _scattered_tables(n_seqs: int, blocks_each: int, num_blocks: int, seed: int) -> list[list[int]]:
    ids = list(range(num_blocks))
    random.Random(seed).shuffle(ids)  # non-contiguous, interleaved block ids
    return [ids[i * blocks_each : (i + 1) * blocks_each] for i in range(n_seqs)]


@pytest.mark.parametrize(
    "schedule",
    [
        [[5, 3, 9]],  # one prefill step for three sequences
        [[5, 3, 9], [1, 1, 1], [1, 1, 1]],  # prefill, then batched decode steps
        [[4, 2, 6], [3, 1, 2], [1, 1, 1], [1, 5, 1]],  # chunked prefill mixed with decode rows
    ],
)
def test_paged_equals_contiguous(schedule):
    g = torch.Generator().manual_seed(0)
    n = len(schedule[0])
    total = [sum(step[i] for step in schedule) for i in range(n)]
    tables = _scattered_tables(n, -(-max(total) // BS), 64, seed=1)
    paged = PagedKVCache(1, 64, BS, HKV, D, torch.float32, "cpu")
    contiguous = [SequenceKVCache(1, HKV, D, t, torch.float32, "cpu") for t in total]
    done = [0] * n
    for q_lens in schedule:
        t = sum(q_lens)
        q, k, v = (
            torch.randn(t, H, D, generator=g),
            torch.randn(t, HKV, D, generator=g),
            torch.randn(t, HKV, D, generator=g),
        )
        slots = [
            tables[i][p // BS] * BS + p % BS
            for i, m in enumerate(q_lens)
            for p in range(done[i], done[i] + m)
        ]
        ctx_lens = [done[i] + m for i, m in enumerate(q_lens)]
        got = PagedContext(paged, torch.tensor(slots), q_lens, ctx_lens, tables).attend(0, q, k, v)
        ref_ctx = BatchKVContext(contiguous, q_lens)
        want = ref_ctx.attend(0, q, k, v)
        ref_ctx.advance()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        done = ctx_lens


def test_block_bytes():
    assert PagedKVCache.bytes_per_block(2, 16, 4, 128, torch.bfloat16) == 2 * 2 * 16 * 4 * 128 * 2


def test_copy_blocks_copies_every_layer():
    cache = PagedKVCache(2, 4, 3, 2, 5, torch.float32, "cpu")
    cache.k.normal_()
    cache.v.normal_()
    k, v = cache.k.clone(), cache.v.clone()
    cache.copy_blocks([(1, 3), (0, 2)])
    assert torch.equal(cache.k[:, 3], k[:, 1]) and torch.equal(cache.v[:, 2], v[:, 0])
    assert torch.equal(cache.k[:, :2], k[:, :2])


def test_a_cpu_pool_costs_resident_memory_only_for_the_blocks_written():
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    cache = PagedKVCache(4, 8192, 16, 2, 64, torch.float32, "cpu")  # 2 x 256 MiB
    assert process.memory_info().rss - before < 32 * 2**20
    assert float(cache.k[:, 7].abs().sum()) == 0.0 and float(cache.v[3, 100:110].abs().sum()) == 0.0
    cache.k[:, 5] = 1.5
    cache.copy_blocks([(5, 9)])
    assert torch.equal(cache.k[:, 9], cache.k[:, 5]) and float(cache.k[:, 9].mean()) == 1.5
    assert process.memory_info().rss - before < 48 * 2**20


def test_the_default_cpu_pool_is_sized_from_the_model_and_its_context():
    from engine.kv_cache import CPU_FULL_CONTEXTS, KVCacheSpec

    cpu = torch.device("cpu")
    per_block = PagedKVCache.bytes_per_block(4, 16, 2, 32, torch.float32)  # 16 tokens of a demo model
    spec = KVCacheSpec(block_size=16)
    assert spec.blocks_for(4, 2, 32, torch.float32, cpu, 4096) == CPU_FULL_CONTEXTS * 4096 // 16
    assert spec.blocks_for(4, 2, 32, torch.float32, cpu, 10**9) == (1 << 30) // per_block  # the 1 GiB cap
    assert spec.blocks_for(4, 2, 32, torch.float32, cpu) == (1 << 30) // per_block  # no context known
    assert KVCacheSpec(16, nbytes=per_block * 10).blocks_for(4, 2, 32, torch.float32, cpu, 4096) == 10
