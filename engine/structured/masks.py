"""MaskPrefetcher: the bitmask rows of a step's constrained samples, computed off the critical path.

After a step samples, each constrained sample's matcher takes its token (`GrammarConstraint.advance`)
and `prefetch` starts computing the next token's masks for all of them on a side thread (llguidance
fills them in parallel with the GIL released) while the engine schedules and runs the next forward.
At the next sample, `apply` takes the finished rows (waiting only if the forward was faster than the
masks), computes the rows nobody prefetched (new samples, gates that just opened) and adds a
{0, -inf} bias to the constrained rows in one batched op (`BiasTable`: the bitmask read as bytes
indexes a 256-entry table; the usual steady step, every row prefetched in order, copies no row).

Legend: S = rows sampled this step, R = constrained rows among them, V = vocabulary,
W = ceil(V / 32) int32 words of a bitmask row.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from llguidance import LLExecutor

from engine.structured.constraint import GrammarConstraint

# bias of byte value b's 8 tokens: 0 where bit k of b is set (allowed), -inf where not
_BYTE_ALLOWED = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1  # (256, 8)


@dataclass
class PendingMask:
    """A constraint's prefetched mask: row `row` of `bitmask` once `done` finished."""

    done: Future
    bitmask: torch.Tensor  # (R', W) int32
    row: int


class BiasTable:
    """Turns bitmask rows into additive {0, -inf} logit biases with one table lookup per byte.

    A little-endian int32 word's byte b holds tokens 8 b .. 8 b + 7 of that word, so the rows read as
    bytes are in token order: bias[r, 8 i + k] = table[byte i of row r, k]. The lookup runs on the
    logits' device (only the small bitmask is copied there) in the logits' dtype.
    """

    def __init__(self) -> None:
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._tables:
            zero_or_inf = torch.zeros((256, 8), dtype=dtype).masked_fill(_BYTE_ALLOWED == 0, float("-inf"))
            self._tables[key] = zero_or_inf.to(device)  # (256, 8)
        return self._tables[key]

    def bias(self, bitmask: torch.Tensor, vocab_size: int, like: torch.Tensor) -> torch.Tensor:
        """bitmask (R, W) int32 -> (R, vocab_size) bias in `like`'s dtype, on its device."""
        rows = bitmask.shape[0]
        as_bytes = bitmask.view(torch.uint8).to(like.device, non_blocking=True)  # (R, 4 W)
        bias = self.table(like.device, like.dtype)[as_bytes.long()]  # (R, 4 W, 8)
        return bias.view(rows, -1)[:, :vocab_size]


class MaskPrefetcher:
    """One per engine; used from the engine thread only (its side thread runs the prefetches)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self._bias = BiasTable()
        self._executor = LLExecutor()  # llguidance's own pool: one matcher per task, GIL released
        self._side = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        self.prefetched = 0  # masks that were ready (or under way) when the sampler asked
        self.computed = 0  # masks computed while the sampler waited

    def apply(self, logits: torch.Tensor, constraints: Sequence[GrammarConstraint | None]) -> torch.Tensor:
        """logits [S, V] -> (S, V) with every active constraint's disallowed tokens at -inf.

        Returns `logits` itself when no row is constrained, otherwise a new tensor.
        """
        rows = [i for i, c in enumerate(constraints) if c is not None and c.active and c.error is None]
        if not rows:
            return logits
        masks = self.masks([constraints[i] for i in rows])  # (R, W)
        bias = self._bias.bias(masks, logits.shape[1], logits)  # (R, V)
        if len(rows) == logits.shape[0]:
            return logits + bias  # (S, V): every row constrained
        out = logits.clone()  # (S, V)
        out.index_add_(0, torch.tensor(rows, device=logits.device), bias)
        return out

    def masks(self, constraints: Sequence[GrammarConstraint]) -> torch.Tensor:
        """(R, W) int32: each constraint's next-token mask, prefetched or computed now."""
        whole = _one_whole_prefetch(constraints)
        if whole is not None:  # the usual steady step: the same rows, in the order they were prefetched
            for c in constraints:
                c.pending = None
            whole.done.result()
            self.prefetched += len(constraints)
            return whole.bitmask
        out = torch.empty(len(constraints), self.words, dtype=torch.int32)  # (R, W)
        missing = []
        for j, c in enumerate(constraints):
            pending, c.pending = c.pending, None
            if pending is None:
                missing.append((c.matcher, j))
                continue
            pending.done.result()
            out[j] = pending.bitmask[pending.row]
            self.prefetched += 1
        if missing:
            _fill_par(self._executor, missing, out)
            self.computed += len(missing)
        return out

    def prefetch(self, constraints: Sequence[GrammarConstraint]) -> None:
        """Start the next-token masks of these (just advanced) constraints on the side thread."""
        live = [c for c in constraints if c.active and c.error is None]
        if not live:
            return
        bitmask = torch.empty(len(live), self.words, dtype=torch.int32)  # (R', W)
        done = self._side.submit(
            _fill_par, self._executor, [(c.matcher, j) for j, c in enumerate(live)], bitmask
        )
        for j, c in enumerate(live):
            c.pending = PendingMask(done, bitmask, j)

    def close(self) -> None:
        self._side.shutdown(wait=True, cancel_futures=True)


def _one_whole_prefetch(constraints: Sequence[GrammarConstraint]) -> PendingMask | None:
    """The pending mask when constraint j holds row j of one prefetched bitmask with exactly these rows."""
    first = constraints[0].pending
    if first is None or first.bitmask.shape[0] != len(constraints):
        return None
    for j, c in enumerate(constraints):
        if c.pending is None or c.pending.bitmask is not first.bitmask or c.pending.row != j:
            return None
    return first


def _fill_par(executor: LLExecutor, rows: list[tuple[Any, int]], bitmask: torch.Tensor) -> None:
    """llguidance's parallel mask fill. Its module is imported here, on first use, not with the engine:
    importing it compiles a kernel with torch.compile, which pulls in torch._dynamo, sympy and networkx
    (~170 MiB of RSS in a worker that compiles no decode graph and never sees a grammar)."""
    from llguidance.torch import fill_next_token_bitmask_par

    fill_next_token_bitmask_par(executor, rows, bitmask)
