"""Prefill-only requests that return the model's final hidden states at chosen prompt positions.

Flow: `add_request(ids, hidden_positions=[...])` -> `check_hidden_request` validates and the sequence
carries a `HiddenCapture` -> admission reuses cached KV only before its first position
(`Sequence.compute_from`) -> each step the runner `plan`s which of the step's rows a chunk holds and
`gather_hidden` takes every such row with ONE index_select over the step's hidden [T, d] -> when the
prompt is computed the engine ends the request with `finish_hidden` (no logits, no token sampled).

Legend: T = tokens in the step, d = hidden size, k = requested positions, G = rows gathered this step.
Rows are kept in sorted-position order (a chunk's hits are one contiguous slice of the buffer) and put
back in the caller's order once, at finish. A recomputed chunk (after preemption) overwrites its rows.
"""

from __future__ import annotations

import bisect
import operator
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import RequestError
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from engine.sequence import TrackedRequest


@dataclass(eq=False)
class HiddenCapture:
    """The rows a prefill-only sequence wants and those collected so far."""

    positions: tuple[int, ...]  # absolute prompt positions, in the caller's order
    ordered: list[int] = field(init=False)  # the same positions, ascending
    rows: torch.Tensor | None = None  # (k, d) in ascending-position order, allocated at the first hit
    filled: int = 0  # ordered[:filled] hold rows of the latest computation of their chunks

    def __post_init__(self) -> None:
        self.ordered = sorted(self.positions)

    @property
    def first(self) -> int:
        """The smallest requested position: the prefix cache may supply KV only before it."""
        return self.ordered[0]

    def plan(self, start: int, end: int) -> tuple[int, int]:
        """Which rows chunk [start, end) computes: ordered[i0:i1]; raises if one would be skipped."""
        i0 = bisect.bisect_left(self.ordered, start)
        i1 = bisect.bisect_left(self.ordered, end, lo=i0)
        if i0 > self.filled:  # never: admission recomputes every requested position
            raise RuntimeError(f"hidden row at position {self.ordered[self.filled]} was never computed")
        return i0, i1

    def store(self, i0: int, i1: int, rows: torch.Tensor) -> None:
        """rows (i1 - i0, d): the hidden rows at ordered[i0:i1]."""
        if self.rows is None:
            self.rows = torch.empty(len(self.ordered), rows.shape[-1], dtype=rows.dtype, device=rows.device)
        self.rows[i0:i1] = rows
        self.filled = i1

    def result(self) -> torch.Tensor:
        """(k, d) in the caller's order, as a normal (not inference-mode) tensor owned by the caller."""
        if self.rows is None or self.filled != len(self.ordered):
            raise RuntimeError(f"only {self.filled} of {len(self.ordered)} hidden rows were computed")
        where = {p: i for i, p in enumerate(self.ordered)}
        order = [where[p] for p in self.positions]
        if order == list(range(len(order))):
            return self.rows.clone()
        return self.rows.index_select(0, torch.tensor(order, device=self.rows.device))  # (k, d)


@dataclass
class HiddenPick:
    """One chunk's share of a step's gather: rows ordered[i0:i1] of `capture`, whose chunk starts at
    prompt position `start` and at row `offset` of the step's flat batch."""

    capture: HiddenCapture
    i0: int
    i1: int
    start: int
    offset: int


def gather_hidden(hidden: torch.Tensor, picks: list[HiddenPick]) -> None:
    """Copy each pick's rows out of the step's hidden [T, d] with a single index_select."""
    flat = [p.offset + pos - p.start for p in picks for pos in p.capture.ordered[p.i0 : p.i1]]
    if not flat:
        return
    picked = hidden.index_select(0, torch.tensor(flat, device=hidden.device))  # (G, d)
    row = 0
    for p in picks:
        n = p.i1 - p.i0
        if n:
            p.capture.store(p.i0, p.i1, picked[row : row + n])
            row += n


def check_hidden_request(
    positions: Sequence[int], prompt_len: int, params: SamplingParams, diffusion_model: bool
) -> HiddenCapture:
    """Validate a prefill-only request; RequestError naming the problem."""
    if diffusion_model:
        raise RequestError("hidden_positions need an autoregressive model; this one is a diffusion model")
    if (
        params.n != 1
        or params.logprobs is not None
        or params.logits_processors
        or params.diffusion
        or params.constraint
    ):
        raise RequestError(
            "a hidden_positions request samples nothing: it takes n=1 and no logprobs, logits "
            "processors, grammar or diffusion options"
        )
    if isinstance(positions, str | bytes) or not isinstance(positions, Sequence | torch.Tensor):
        raise RequestError(f"hidden_positions must be a list of ints, got {type(positions).__name__}")
    found = [_position(p, prompt_len) for p in positions]
    if not found:
        raise RequestError("hidden_positions is empty: give at least one prompt position")
    dups = sorted(p for p, count in Counter(found).items() if count > 1)
    if dups:
        raise RequestError(f"hidden_positions has duplicates: {dups[:5]}")
    return HiddenCapture(tuple(found))


def _position(value: Any, prompt_len: int) -> int:
    try:
        p = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        p = None
    if p is None:
        raise RequestError(f"hidden_positions must hold ints, got {value!r}")
    if not 0 <= p < prompt_len:
        raise RequestError(f"hidden position {p} is outside the prompt's positions [0, {prompt_len})")
    return p


def finish_hidden(req: TrackedRequest) -> None:
    """End a prefill-only request whose prompt is computed: its rows, finish_reason "stop", metrics."""
    seq, out = req.seq, req.output
    out.hidden_states = seq.hidden.result()
    seq.hidden.rows = None  # the buffer is the caller's copy now
    out.finish_reason = "stop"
    out.metrics.cached_prompt_tokens = min(seq.num_cached, len(seq.prompt_token_ids))
    out.metrics.total_time_s = time.monotonic() - seq.arrival_time
