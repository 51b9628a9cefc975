"""Model runner: a scheduled step -> flat token batch + paged attention context -> logits to sample.

Flow: for each (sequence, n) take its next n uncomputed tokens and their positions, map each position
to its KV slot through the block table, run the model once over all T tokens, and compute logits only
at the last token of the sequences that finish their prompt or decode this step.
"""

from __future__ import annotations

import torch

from engine.block_manager import BlockManager
from engine.kv_cache import PagedContext, PagedKVCache
from engine.model_base import CausalLM
from engine.sequence import Sequence


class ModelRunner:
    def __init__(
        self, model: CausalLM, cache: PagedKVCache, blocks: BlockManager, device: torch.device
    ) -> None:
        self.model, self.cache, self.blocks, self.device = model, cache, blocks, device

    @torch.inference_mode()
    def execute(self, scheduled: list[tuple[Sequence, int]]) -> tuple[list[Sequence], torch.Tensor | None]:
        """Run one step; returns the sequences that need a token now and their logits [S, V] float32."""
        bs = self.cache.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        tables, q_lens, ctx_lens, last_rows, sample = [], [], [], [], []
        for seq, n in scheduled:
            start, end = seq.num_computed, seq.num_computed + n
            table = self.blocks.block_table(seq.seq_id)
            ids += seq.token_ids[start:end]
            positions += range(start, end)
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            tables.append(table)
            q_lens.append(n)
            ctx_lens.append(end)
            if end == seq.num_tokens:  # prompt complete (or a decode step): sample from the last row
                sample.append(seq)
                last_rows.append(len(ids) - 1)
        dev = self.device
        ctx = PagedContext(self.cache, torch.tensor(slots, device=dev), q_lens, ctx_lens, tables)
        hidden = self.model(torch.tensor(ids, device=dev), torch.tensor(positions, device=dev), ctx)  # (T, d)
        if not sample:
            return [], None
        return sample, self.model.compute_logits(hidden[torch.tensor(last_rows, device=dev)])  # (S, V)
