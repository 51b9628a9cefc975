"""The learnable query tokens of Ming's image generation, in the thinker's prompt.

For each scale s a block `<image>` + `<imagePatch>` x s² + `</image>` is inserted after a prompt row's
last real token (its first pad position; upstream `append_input_ids_with_multiscale_learnable_tokens`):
the patch slots are the query positions (`gen_mask`), embedded with the parameters
`query_tokens_dict["{s}x{s}"]` (s², d) and positioned like an image of grid [1, 2, 2·s²] (one row of s²
merged tokens under 3-D RoPE). After the forward only the last (largest) scale's s² hidden states are
kept: they are the condition the connector reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QueryTokens:
    """The token ids around the query slots (upstream: image_patch_token, +1 start, +2 end)."""

    patch: int
    start: int
    end: int

    @classmethod
    def from_patch_token(cls, image_patch_token: int) -> QueryTokens:
        return cls(image_patch_token, image_patch_token + 1, image_patch_token + 2)

    def block(self, scales: Sequence[int]) -> tuple[list[int], list[int]]:
        """(ids, gen_mask) of the query blocks of all scales, in order."""
        ids: list[int] = []
        gen: list[int] = []
        for s in scales:
            ids += [self.start] + [self.patch] * (s * s) + [self.end]
            gen += [0] + [1] * (s * s) + [0]
        return ids, gen


def query_grids(scales: Sequence[int]) -> list[list[int]]:
    """The image_grid_thw of each query block: [1, 2, 2·s²] (s² tokens after the 2x2 merge)."""
    return [[1, 2, 2 * s * s] for s in scales]


def insert_queries(
    input_ids: Sequence[Sequence[int]],
    attention_mask: Sequence[Sequence[int]],
    scales: Sequence[int],
    tokens: QueryTokens,
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Rows (right-padded) -> (ids, attention_mask, gen_mask) with the query blocks at each row's first
    pad position (after the whole row when it has none); inserted slots are attended (mask 1)."""
    block, gen_block = tokens.block(scales)
    ids_out, mask_out, gen_out = [], [], []
    for ids, mask in zip(input_ids, attention_mask, strict=True):
        if len(ids) != len(mask):
            raise ValueError(f"input_ids row of {len(ids)} tokens has an attention mask of {len(mask)}")
        cut = next((i for i, m in enumerate(mask) if m == 0), len(mask))  # first pad position
        ids_out.append([*ids[:cut], *block, *ids[cut:]])
        mask_out.append([*mask[:cut], *[1] * len(block), *mask[cut:]])
        gen_out.append([0] * cut + gen_block + [0] * (len(mask) - cut))
    return ids_out, mask_out, gen_out


def append_queries(prompt_ids: Sequence[int], scales: Sequence[int], tokens: QueryTokens) -> QueryPrompt:
    """One unpadded prompt + the query blocks -> the ids and where the last scale's queries sit."""
    block, gen = tokens.block(scales)
    ids = [*prompt_ids, *block]
    last = scales[-1] * scales[-1]
    query_at = [len(prompt_ids) + i for i, g in enumerate(gen) if g]
    return QueryPrompt(ids, query_at[-last:], len(query_at))


@dataclass(frozen=True)
class QueryPrompt:
    """A prompt with its query blocks: `positions` of the last scale's s² queries (the ones whose hidden
    states become the condition), `num_queries` = Σ s² (the learnable rows injected)."""

    ids: list[int]
    positions: list[int]
    num_queries: int


def select_queries(hidden: torch.Tensor, gen_mask: torch.Tensor, scales: Sequence[int]) -> torch.Tensor:
    """Upstream's selection after a full forward: hidden [B, L, H] at gen_mask [B, L] -> [B, Σ s², H],
    of which only the last scale's s² rows are kept -> [B, s², H]."""
    last = scales[-1] * scales[-1]
    return torch.stack([h[m.bool()][-last:] for h, m in zip(hidden, gen_mask, strict=True)])
