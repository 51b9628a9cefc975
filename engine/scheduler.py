"""Continuous-batching scheduler: which sequences run this step, and how many of their tokens.

Each step has a token budget (`max_num_batched_tokens`). Running sequences go first, in priority /
arrival order: a decoding sequence takes one token, a sequence still in prefill takes the next chunk
of its prompt (chunked prefill), so prefill and decode share a step. When the KV pool cannot give a
running sequence its next slots, the lowest-order running sequence is preempted by recompute (blocks
freed, back to waiting with num_computed 0). If no one was preempted, waiting sequences are admitted
(best priority, then FCFS) while `max_num_seqs` and the budget allow (a sequence that will fork n - 1
more samples counts n); admission reuses cached prefix blocks before `Sequence.compute_from` only.
Priority between steps' contents: while a sequence of better priority has prompt left to compute,
worse-priority prefills wait; and in a step that does compute such a prompt, worse-priority decodes
sit out that one step (they keep their KV and decode in the next step without a better prefill).
So an interactive request's prefill step is as short as on an idle engine even while a batch job
decodes many sequences (issue #6); background work still runs in every other step. Sequences of
priority >= `background_priority` (when set) get at most `background_prefill_tokens` prompt tokens
per step all together, so a burst of background prompts cannot make one step long (a step being
computed when an interactive request arrives is what that request waits for first). An `isolated`
sequence takes fixed chunks of `max_num_batched_tokens` from position 0, whatever else the step holds.
Pure CPU logic over `Sequence` and `BlockManager`; unit-tested without a model.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.sequence import Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    background_priority: int | None = None  # priorities >= this are background work
    background_prefill_tokens: int = 256  # prompt tokens per step for all background sequences

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.background_prefill_tokens < 1:
            raise ValueError(f"background_prefill_tokens must be >= 1, got {self.background_prefill_tokens}")


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, new tokens)
    preempted: list[Sequence] = field(default_factory=list)
    held: int = 0  # decodes that sat out this step for a better-priority prefill

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config, self.blocks = config, blocks
        self.waiting: list[tuple[tuple[int, int], Sequence]] = []  # heap by (priority, arrival)
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._background_left = config.background_prefill_tokens  # reset every step

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        heapq.heappush(self.waiting, (seq.order, seq))

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence (finished or aborted) wherever it is and free its blocks at once."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting = [(o, s) for o, s in self.waiting if s is not seq]
            heapq.heapify(self.waiting)
        seq.status = Status.FINISHED
        self.blocks.free(seq.seq_id)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        self._background_left = self.config.background_prefill_tokens
        floor = self._prefill_floor()
        budget = self._schedule_running(out, self.config.max_num_batched_tokens, floor)
        if not out.preempted:
            self._admit_waiting(out, budget, floor)
        self._hold_worse_decodes(out)
        return out

    def _hold_worse_decodes(self, out: SchedulerOutput) -> None:
        """Drop this step's decodes of priority worse than the best prefill scheduled in it.

        Only a prefill that is actually scheduled holds anyone back (a prompt that cannot be admitted
        never stalls the running sequences), and a held decode loses nothing: its slot stays
        reserved and it runs in the next step without a better-priority prefill.
        """
        prefills = [seq.priority for seq, n in out.scheduled if seq.num_uncomputed > 1 or n > 1]
        if not prefills:
            return
        best = min(prefills)
        kept = [
            (seq, n) for seq, n in out.scheduled if seq.priority <= best or seq.num_uncomputed > 1 or n > 1
        ]
        out.held = len(out.scheduled) - len(kept)
        out.scheduled = kept

    def _prefill_floor(self) -> int | None:
        """The best priority among sequences with prompt left to compute (running or waiting).

        Prefill of worse-priority sequences waits while such a sequence exists: a latency-sensitive
        request is not slowed by a long background prefill sharing its step (worse-priority decodes
        are held by `_hold_worse_decodes` only in a step that runs the better prompt).
        """
        prios = [s.priority for s in self.running if s.num_uncomputed > 1]
        if self.waiting:
            prios.append(self.waiting[0][1].priority)  # the heap's top has the best priority
        return min(prios) if prios else None

    def _schedule_running(self, out: SchedulerOutput, budget: int, floor: int | None) -> int:
        self.running.sort(key=lambda s: s.order)
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.num_uncomputed > 1 and floor is not None and seq.priority > floor:
                i += 1  # its prefill waits for the better-priority one (see _prefill_floor)
                continue
            n = self._chunk(seq, budget)
            if n == 0:
                i += 1  # a background prompt past this step's background share
                continue
            while not self.blocks.ensure_slots(seq.seq_id, seq.num_computed + n):
                victim = self.running.pop()  # lowest order: the latest, least important
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    return budget
            out.scheduled.append((seq, n))
            self._spend(seq, n)
            budget -= n
            i += 1
        return budget

    def _is_background(self, seq: Sequence) -> bool:
        bg = self.config.background_priority
        return bg is not None and seq.priority >= bg

    def _chunk(self, seq: Sequence, budget: int) -> int:
        """Tokens `seq` may compute this step: its next prompt chunk or decode token, within budget."""
        if seq.diffusion is not None:  # whole diffusion blocks only; a block wider than the budget
            n = seq.diffusion.chunk(seq.num_computed, budget)  # runs alone in a step of its own
            full = budget == self.config.max_num_batched_tokens
            return n if n or not full else seq.num_uncomputed
        if seq.isolated:  # fixed chunks (a step may exceed the budget by one): the same forwards always
            return min(seq.num_uncomputed, self.config.max_num_batched_tokens)
        n = min(seq.num_uncomputed, budget)
        if n > 1 and self._is_background(seq):
            n = min(n, self._background_left)
        return n

    def _spend(self, seq: Sequence, n: int) -> None:
        if n > 1 and self._is_background(seq):
            self._background_left -= n

    def _admit_waiting(self, out: SchedulerOutput, budget: int, floor: int | None) -> None:
        occupied = sum(s.width for s in self.running)  # samples still to fork hold their slots
        while self.waiting and budget > 0:
            seq = self.waiting[0][1]
            if occupied + seq.width > self.config.max_num_seqs:
                return
            if floor is not None and seq.priority > floor:
                return
            if self._is_background(seq) and self._background_left <= 0:
                return  # the heap's later entries are background too
            seq.num_computed = seq.num_cached = self.blocks.allocate(
                seq.seq_id, seq.block_tokens, seq.compute_from
            )
            n = self._chunk(seq, budget)
            if n == 0 or not self.blocks.ensure_slots(seq.seq_id, seq.num_computed + n):
                self.blocks.free(seq.seq_id)
                seq.num_computed = 0
                return
            heapq.heappop(self.waiting)
            seq.status = Status.RUNNING
            self.running.append(seq)
            out.scheduled.append((seq, n))
            self._spend(seq, n)
            budget -= n
            occupied += seq.width

    def add_running(self, seq: Sequence) -> None:
        """A sequence forked from a running one joins the running set directly (its KV is in place)."""
        seq.status = Status.RUNNING
        self.running.append(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free(seq.seq_id)
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.add(seq)
