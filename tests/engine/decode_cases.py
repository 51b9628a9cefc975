"""A paged KV cache with prefilled prompts and the decode step that follows them, for comparing the
compiled decode graph with the eager forward (tests/engine/test_decode_graph.py, test_int8.py)."""

from __future__ import annotations

import torch

from engine.kv_cache import PagedContext, PagedKVCache


def prefilled(model, lengths):
    """A paged cache holding one prefilled prompt per length (blocks of 4), and the decode context
    of their next token: (ids, positions, a factory of fresh contexts for that step)."""
    rt, bs = model.runtime, 4
    cache = PagedKVCache(rt.num_layers, 64, bs, rt.num_kv_heads, rt.head_dim, torch.float32, "cpu")
    g = torch.Generator().manual_seed(sum(lengths))
    tables, next_block = [], 0
    for n in lengths:
        blocks = -(-(n + 1) // bs)
        tables.append(list(range(next_block + blocks - 1, next_block - 1, -1)))  # out of order on purpose
        next_block += blocks
    slots = lambda seq, ps: torch.tensor([tables[seq][p // bs] * bs + p % bs for p in ps])  # noqa: E731
    with torch.inference_mode():
        for i, n in enumerate(lengths):
            ids = torch.randint(2, rt.vocab_size, (n,), generator=g)
            ctx = PagedContext(cache, slots(i, range(n)), [n], [n], [tables[i]])
            model(ids, torch.arange(n), ctx)
    ids = torch.randint(2, rt.vocab_size, (len(lengths),), generator=g)
    positions = torch.tensor(lengths)
    step_slots = torch.cat([slots(i, [n]) for i, n in enumerate(lengths)])

    def context():
        return PagedContext(cache, step_slots, [1] * len(lengths), [n + 1 for n in lengths], tables)

    return ids, positions, context
