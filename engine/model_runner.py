"""Model runner: a scheduled step -> flat token batch + paged attention context -> logits to sample.

Flow: for each (sequence, n) take its next n uncomputed tokens and their positions (a multimodal
sequence also its media rows, multi-row positions and router gates: `engine.multimodal`), map each
position to its KV slot through the block table, run the model once over all T tokens, and compute logits only
at the last token of the sequences that finish their prompt or decode this step, and at every row of
the current block of a diffusion sequence whose window is complete. A prefill-only sequence gets no
logits: the hidden rows it asked for are gathered into it (`engine.hidden_states`), one
index_select per step for all of them. An isolated one (reproducible rows) runs in a forward of its own.

Over several ranks (engine.parallel) rank 0's runner plans each forward into a `StepInputs` and
broadcasts it; the other ranks' runners `follow()`, running the same forward on their share of the
model and their share of the KV cache (same slots), so the layers' collectives line up. KV block
copies (sample forks) and cache-free scoring travel the same way. Only rank 0 samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from engine.block_manager import BlockManager
from engine.decode_graph import DecodeGraph
from engine.hidden_states import HiddenPick, gather_hidden
from engine.kv_cache import PagedContext, PagedKVCache
from engine.model_base import CausalLM
from engine.multimodal import PromptInputs, merge_forward_args
from engine.parallel.group import SINGLE, TensorGroup
from engine.sequence import Sequence


@dataclass(frozen=True)
class StepInputs:
    """One forward, as every rank runs it: T tokens, their positions ([T] or [P, T]), media keywords,
    KV slots and per-sequence lengths / block tables, and the hidden rows that need logits (or None)."""

    ids: torch.Tensor
    positions: torch.Tensor
    extra: dict[str, Any]
    slots: torch.Tensor
    q_lens: list[int]
    ctx_lens: list[int]
    tables: list[list[int]]
    block_lengths: list[int | None] | None
    rows: torch.Tensor | None

    def to(self, device: torch.device | str) -> StepInputs:
        def move(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x.to(device)
            return tuple(move(i) for i in x) if isinstance(x, tuple) else x

        return replace(
            self,
            ids=self.ids.to(device),
            positions=self.positions.to(device),
            extra={k: move(v) for k, v in self.extra.items()},
            slots=self.slots.to(device),
            rows=None if self.rows is None else self.rows.to(device),
        )


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        cache: PagedKVCache,
        blocks: BlockManager | None,
        device: torch.device,
        group: TensorGroup = SINGLE,
        decode_graph: DecodeGraph | None = None,
    ) -> None:
        self.model, self.cache, self.blocks, self.device = model, cache, blocks, device
        self.group = group
        self.decode_graph = decode_graph  # few-row decode steps, compiled (CPU, one rank)

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
        step, sample, picks = self._plan(scheduled)
        self._tell_followers("forward", step)
        hidden, logits = self.run(step)
        gather_hidden(hidden, picks)
        return sample, logits

    def _plan(
        self, scheduled: list[tuple[Sequence, int]]
    ) -> tuple[StepInputs, list[Sequence], list[HiddenPick]]:
        assert self.blocks is not None, "only rank 0 plans steps"
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
        positions, extra = merge_forward_args(spans, dev)  # [T] | [P, T]; media rows / gates if any
        step = StepInputs(
            ids=torch.tensor(ids, device=dev),
            positions=positions,
            extra=extra,
            slots=torch.tensor(slots, device=dev),
            q_lens=q_lens,
            ctx_lens=ctx_lens,
            tables=tables,
            block_lengths=blocks if any(b is not None for b in blocks) else None,
            rows=torch.tensor(rows, device=dev) if sample else None,
        )
        return step, sample, picks

    def run(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The forward itself (every rank): hidden [T, d] and, for `step.rows`, logits [R, V]."""
        ctx = PagedContext(
            self.cache, step.slots, step.q_lens, step.ctx_lens, step.tables, step.block_lengths
        )
        if self.decode_graph is not None and self.decode_graph.takes(step):
            compiled = self.decode_graph(step.ids, step.positions, ctx)
            if compiled is not None:
                return compiled
        hidden = self.model(step.ids, step.positions, ctx, **step.extra)  # (T, d)
        if step.rows is None:
            return hidden, None
        return hidden, self.model.compute_logits(hidden[step.rows])  # (R, V)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy KV blocks src -> dst on every rank (a forked sample's partly shared last block)."""
        self._tell_followers("copy", pairs)
        self.cache.copy_blocks(pairs)

    @torch.inference_mode()
    def score(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits without the cache (the model's own attention), on every rank."""
        self._tell_followers("score", (ids.cpu(), positions.cpu()))
        return self.model.compute_logits(self.model(ids, positions, None))

    def stop_followers(self) -> None:
        self._tell_followers("stop", None)

    def _tell_followers(self, kind: str, payload: Any) -> None:
        if self.group.size > 1:
            if isinstance(payload, StepInputs):
                payload = payload.to("cpu")
            self.group.broadcast_object((kind, payload))

    @torch.inference_mode()
    def follow(self) -> None:
        """A follower rank's loop: run what rank 0 broadcasts until it says stop."""
        while True:
            kind, payload = self.group.broadcast_object()
            if kind == "stop":
                return
            if kind == "forward":
                self.run(payload.to(self.device))
            elif kind == "copy":
                self.cache.copy_blocks(payload)
            elif kind == "score":
                ids, positions = payload
                self.model.compute_logits(self.model(ids.to(self.device), positions.to(self.device), None))
