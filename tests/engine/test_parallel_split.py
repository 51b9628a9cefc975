"""Who holds what over N ranks: heads, KV heads (replicated when fewer than ranks), widths, vocab."""

from __future__ import annotations

import itertools

import pytest

from engine.parallel.group import ParallelConfig
from engine.parallel.split import HeadSplit, even_part, part_widths, split_heads, uneven_part


def test_heads_split_evenly_and_kv_heads_follow_their_query_heads():
    assert [split_heads(32, 4, 2, r) for r in range(2)] == [HeadSplit(0, 16, 0, 2), HeadSplit(16, 16, 2, 2)]
    # Ling-1T at TP=16: 64 query heads, 8 KV heads -> 4 query heads and one (shared) KV head per rank
    splits = [split_heads(64, 8, 16, r) for r in range(16)]
    assert all(s.q_heads == 4 and s.kv_heads == 1 for s in splits)
    assert [s.kv_start for s in splits] == [r // 2 for r in range(16)]
    for s in splits:  # every query head of the rank reads the KV head the rank holds
        assert {q // (64 // 8) for q in range(s.q_start, s.q_start + s.q_heads)} == {s.kv_start}


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((6, 2, 4, 0), r"num_attention_heads \(6\) is not divisible by the tensor-parallel size \(4\)"),
        ((12, 4, 6, 0), r"tensor-parallel size \(6\) must be a multiple of num_key_value_heads \(4\)"),
        ((16, 6, 4, 0), r"num_key_value_heads \(6\) is not divisible"),
    ],
)
def test_splits_that_do_not_divide_are_refused_naming_the_field(args, match):
    with pytest.raises(ValueError, match=match):
        split_heads(*args)


def test_vocab_splits_unevenly_and_covers_every_row():
    widths = part_widths(157_184 + 3, 8)
    assert sum(widths) == 157_187 and max(widths) - min(widths) == 1
    parts = [uneven_part(157_187, 8, r) for r in range(8)]
    assert parts[0][0] == 0 and all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert even_part(512, 4, 3, "x") == (384, 128)


def test_parallel_config_is_checked():
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        ParallelConfig(0)
