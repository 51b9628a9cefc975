"""Model runner: a scheduled step -> flat token batch + paged attention context -> logits to sample.

Flow: for each (sequence, n) take its next n uncomputed tokens and their positions (a multimodal
sequence also its media rows, multi-row positions and router gates: `engine.multimodal`), map each
position to its KV slot through the block table, run the model once over all T tokens, and compute logits only
at the last token of the sequences that finish their prompt or decode this step, and at every row of
the current block of a diffusion sequence whose window is complete. A prefill-only sequence gets no
logits: the hidden rows it asked for are gathered into it (`engine.hidden_states`), one
index_select per step for all of them. An isolated one (reproducible rows) runs in a forward of its own.
"""

from __future__ import annotations

import torch

from engine.block_manager import BlockManager
from engine.hidden_states import HiddenPick, gather_hidden
from engine.kv_cache import PagedContext, PagedKVCache
from engine.model_base import CausalLM
from engine.multimodal import PromptInputs, merge_forward_args
from engine.sequence import Sequence


class ModelRunner:
    def __init__(
        self, model: CausalLM, cache: PagedKVCache, blocks: BlockManager, device: torch.device
    ) -> None:
        self.model, self.cache, self.blocks, self.device = model, cache, blocks, device

    @torch.inference_mode()
    def execute(self, scheduled: list[tuple[Sequence, int]]) -> tuple[list[Sequence], torch.Tensor | None]:
        """Run one step; returns the sequences that need logits now and those logits, float32: one row
        [1, V] per autoregressive sequence, then B rows per diffusion sequence (its current block),
        stacked in the order of the returned list. Isolated (prefill-only) sequences each get a
        forward of their own after the shared one."""
        shared = [(seq, n) for seq, n in scheduled if not seq.isolated]
        sample, logits = self._forward(shared) if shared else ([], None)
        for item in scheduled:
            if item[0].isolated:
                self._forward([item])  # its rows depend on nothing else in the step
        return sample, logits

    def _forward(self, scheduled: list[tuple[Sequence, int]]) -> tuple[list[Sequence], torch.Tensor | None]:
        bs = self.cache.block_size
        ids: list[int] = []
        spans: list[tuple[int, int, PromptInputs | None]] = []  # per sequence: its tokens' inputs
        slots: list[int] = []
        tables, q_lens, ctx_lens, rows, sample, blocks = [], [], [], [], [], []
        picks: list[HiddenPick] = []  # prefill-only chunks holding requested rows
        for seq, n in scheduled:
            start, end = seq.num_computed, seq.num_computed + n
            table = self.blocks.block_table(seq.seq_id)
            ids += seq.token_ids[start:end]
            spans.append((start, end, None if seq.media is None else seq.media.prompt))
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            tables.append(table)
            q_lens.append(n)
            ctx_lens.append(end)
            run = seq.diffusion
            blocks.append(None if run is None else run.params.block_length)
            if seq.hidden is not None:  # prefill-only: its rows in this chunk, never logits
                picks.append(HiddenPick(seq.hidden, *seq.hidden.plan(start, end), start, len(ids) - n))
            elif end == seq.num_tokens:  # prompt complete, a decode step, or a diffusion block's step
                sample.append(seq)
                width = 1 if run is None else run.params.block_length
                rows += range(len(ids) - width, len(ids))
        dev = self.device
        block_lengths = blocks if any(b is not None for b in blocks) else None
        ctx = PagedContext(
            self.cache, torch.tensor(slots, device=dev), q_lens, ctx_lens, tables, block_lengths
        )
        positions, extra = merge_forward_args(spans, dev)  # [T] | [P, T]; media rows / gates if any
        hidden = self.model(torch.tensor(ids, device=dev), positions, ctx, **extra)  # (T, d)
        gather_hidden(hidden, picks)
        if not sample:
            return [], None
        return sample, self.model.compute_logits(hidden[torch.tensor(rows, device=dev)])  # (R, V)
