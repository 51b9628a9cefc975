"""Who holds what: the arithmetic of splitting heads, widths, vocab rows and experts over ranks.

Everything here is pure (ints in, ints out) so it is tested without any process group. Head and
width splits must be even (a config that does not divide is refused, naming the field); the vocab
may split unevenly (the first ranks hold one row more). With fewer KV heads than ranks, each KV
head is replicated on the ranks whose query heads use it.
"""

from __future__ import annotations

from dataclasses import dataclass


def even_part(total: int, size: int, rank: int, what: str) -> tuple[int, int]:
    """(start, length) of rank's equal share of `total`; ValueError naming `what` if it does not divide."""
    if total % size:
        raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size ({size})")
    n = total // size
    return rank * n, n


def part_widths(total: int, size: int) -> list[int]:
    """Uneven split: the first total % size ranks hold one more."""
    return [total // size + (r < total % size) for r in range(size)]


def uneven_part(total: int, size: int, rank: int) -> tuple[int, int]:
    widths = part_widths(total, size)
    return sum(widths[:rank]), widths[rank]


@dataclass(frozen=True)
class HeadSplit:
    """Rank's query heads q_start..q_start+q_heads-1 and the KV heads they read."""

    q_start: int
    q_heads: int
    kv_start: int
    kv_heads: int


def split_heads(num_heads: int, num_kv_heads: int, size: int, rank: int) -> HeadSplit:
    """Query heads split evenly; KV heads split evenly too, or (fewer KV heads than ranks) each rank
    keeps the one KV head its query heads share."""
    q_start, q_heads = even_part(num_heads, size, rank, "num_attention_heads")
    if num_kv_heads >= size:
        kv_start, kv_heads = even_part(num_kv_heads, size, rank, "num_key_value_heads")
        return HeadSplit(q_start, q_heads, kv_start, kv_heads)
    if size % num_kv_heads:
        raise ValueError(
            f"tensor-parallel size ({size}) must be a multiple of num_key_value_heads ({num_kv_heads}) "
            "when it is larger"
        )
    group = num_heads // num_kv_heads  # query heads per KV head
    return HeadSplit(q_start, q_heads, q_start // group, 1)
