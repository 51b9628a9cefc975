"""SpeechStage: the talker's loop for every speech request of this process. In a worker it runs on
the engine's thread between the engine's steps (`engine.side_loops`: one OpenMP team, one stream);
alone (tests, benchmarks) on a thread of its own.

Flow: a task thread `submit`s a ticket (the request's resolved settings and a `stopped()` probe), then
`add`s its text segments (all at once for a speech job, one by one for a chat reply being written)
and `close`s it. Each tick the loop drops stopped tickets (cancel, deadline, shutdown: their KV rows go
within one step), starts the next segment of every idle ticket (its own talker request: prompt with
the voice, generator seeded `seed + segment index`, step limit = min(the runaway guard, the request's
remaining audio budget)) and steps every active request: ONE backbone/CFM call for the running batch,
one prefill call for the newcomers, which then join the running batch (`TalkerGenerator.join`). Each
request's patches are decoded here too, on the segment's fixed schedule (`speech_decode`: all torch
work of speech in one thread), and go to its ticket's queue with their samples; its task thread
encodes and publishes them (`speech_output`). A ticket's segments run one after another. A failed
call fails the tickets in it, never the stage. Outcomes: "finished" (`truncated` when the audio
budget ran out), "stopped" or "failed"; the queue ends with None.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.engine import LLMEngine
from models.ming.speech.speech_model import SpeechModel
from models.ming.speech.talker_generator import (
    MAX_CACHE_LEN,
    TalkerBatch,
    TalkerGenerator,
    TalkerRequest,
    TalkerStep,
)
from pipelines.speech_synthesis import SpeechSettings
from pipelines.speech_text import max_patches
from workers.speech_decode import SegmentAudio

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often an idle loop looks at its tickets' stop probes


@dataclass(frozen=True)
class Segment:
    index: int  # 0, 1, ... within its request
    text: str


@dataclass(frozen=True)
class PatchOut:
    """One talker step of one request: its latent patch [P, C], the samples decoded at it (None: not a
    decode point), and whether the segment ends here."""

    segment: Segment
    latents: torch.Tensor
    samples: np.ndarray | None
    last: bool
    reason: str = ""  # on the last patch: "stop" (stop head) or "length" (step limit)


@dataclass(eq=False)
class SpeechTicket:
    """One request in the stage. The task side reads `out` until None, then `outcome`."""

    request_id: str
    settings: SpeechSettings
    stopped: Callable[[], bool]
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # PatchOut ..., None
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)  # its reader left: drop it
    outcome: str = ""  # "finished", "stopped" or "failed"
    error: BaseException | None = None
    truncated: bool = False  # the audio budget ended it before its text did
    steps: int = 0  # talker steps (= patches) so far
    prompt_tokens: int = 0
    # the stage's bookkeeping (under its lock)
    segments: deque[Segment] = field(default_factory=deque)
    added: int = 0
    closed: bool = False
    active: Segment | None = None
    audio: SegmentAudio | None = None  # the active segment's decoder (stage thread)


class SpeechStage:
    def __init__(self, model: SpeechModel, on_forward: Callable[[int, float], None] | None = None) -> None:
        self.model = model
        self.generator = TalkerGenerator(model.talker)
        self._on_forward = on_forward or (lambda rows, seconds: None)
        self._tickets: list[SpeechTicket] = []
        self._batches: list[TalkerBatch] = []  # one, unless the backbone's cache cannot be merged
        self._owner: dict[int, SpeechTicket] = {}  # id(TalkerRequest) -> its ticket
        self._cv = threading.Condition()
        self._stop = False
        self._dirty = False  # something changed since the last round: look now
        self._engine: LLMEngine | None = None
        self._thread = threading.Thread(target=self._loop, name="bailing-speech-stage", daemon=True)

    def start(self, engine: LLMEngine | None = None) -> None:
        """Run on `engine`'s thread, between its steps (a worker: see `engine.side_loops` for why), or
        on a thread of its own."""
        if engine is None:
            self._thread.start()
        else:
            self._engine = engine
            engine.side_loops.attach(self)
            engine.wake()

    def stop(self) -> None:
        """End the loop; tickets still in flight end "stopped"."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._engine is not None:
            self._engine.side_loops.detach(self)
        elif self._thread.is_alive():
            self._thread.join(timeout=30)
        with self._cv:
            for ticket in self._tickets:
                self._end(ticket, "stopped")
            self._tickets.clear()
            self._batches.clear()
            self._owner.clear()

    def submit(self, request_id: str, settings: SpeechSettings, stopped: Callable[[], bool]) -> SpeechTicket:
        ticket = SpeechTicket(request_id, settings, stopped)
        with self._cv:
            if self._stop:
                self._end(ticket, "stopped")
            else:
                self._tickets.append(ticket)
                self._changed()
        self._wake_engine()
        return ticket

    def add(self, ticket: SpeechTicket, text: str) -> bool:
        """Queue the ticket's next segment; False (ignored) once it is closed or has ended."""
        with self._cv:
            if ticket.closed or ticket.done.is_set():
                return False
            ticket.segments.append(Segment(ticket.added, text))
            ticket.added += 1
            self._changed()
        self._wake_engine()
        return True

    def close(self, ticket: SpeechTicket) -> None:
        """No more segments: the ticket finishes once those queued are spoken."""
        with self._cv:
            ticket.closed = True
            self._changed()
        self._wake_engine()

    def wake(self) -> None:
        """Look at the stop probes now (after a cancel)."""
        with self._cv:
            self._changed()
        self._wake_engine()

    def _changed(self) -> None:
        """(lock held) the next round should come now."""
        self._dirty = True
        self._cv.notify_all()

    def _wake_engine(self) -> None:
        """(lock NOT held: the engine takes its own lock, then asks `delay`, which takes ours)"""
        if self._engine is not None:
            self._engine.wake()

    def __len__(self) -> int:
        with self._cv:
            return len(self._tickets)

    # ---- as a side loop of the engine ----------------------------------------------------------------
    def delay(self) -> float | None:
        """None: no tickets; 0: a round is due; else look at the stop probes within POLL_S."""
        with self._cv:
            if self._stop or not self._tickets:
                return None
            return 0.0 if self._dirty or self._runnable() else POLL_S

    def tick(self) -> None:
        """One round: drop stopped tickets, start segments, one step of everything."""
        with self._cv:
            if self._stop:
                return
            self._dirty = False
            self._sweep()
            starting = self._starting()
        if starting or self._batches:
            self._tick(starting)

    # ---- the loop (on a thread of its own) ----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                if not self._stop and not self._dirty and not self._runnable():
                    self._cv.wait(POLL_S if self._tickets else None)
                if self._stop:
                    return
            self.tick()

    def _runnable(self) -> bool:
        return bool(self._batches) or any(t.active is None and t.segments for t in self._tickets)

    def _sweep(self) -> None:
        """Drop stopped tickets (their rows leave now) and end those with nothing left to say."""
        keep = []
        for ticket in self._tickets:
            if ticket.stopped() or ticket.abandoned.is_set():
                self._remove(ticket)
                self._end(ticket, "stopped")
            elif ticket.active is None and not ticket.segments and ticket.closed:
                self._end(ticket, "finished")
            else:
                keep.append(ticket)
        self._tickets = keep

    def _remove(self, ticket: SpeechTicket) -> None:
        """The ticket's active row leaves its batch (lock held, stage thread)."""
        for batch in self._batches:
            rows = {i for i in batch.rows if self._owner.get(id(batch.requests[i])) is ticket}
            if rows:
                for i in rows:
                    self._owner.pop(id(batch.requests[i]), None)
                self.generator.drop(batch, rows)
        self._batches = [b for b in self._batches if not b.done]
        ticket.active = None

    def _starting(self) -> list[tuple[SpeechTicket, TalkerRequest]]:
        """Idle tickets with a queued segment, each with its talker request (lock held)."""
        out = []
        for ticket in self._tickets:
            if ticket.active is not None or not ticket.segments:
                continue
            segment = ticket.segments.popleft()
            remaining = ticket.settings.max_patches - ticket.steps  # > 0: see _run
            try:
                request = self._request(ticket, segment, remaining)
            except Exception as exc:
                log.exception("speech stage: request %s: cannot start a segment", ticket.request_id)
                self._fail([ticket], exc)
                continue
            ticket.active = segment
            out.append((ticket, request))
        return out

    def _request(self, ticket: SpeechTicket, segment: Segment, remaining: int) -> TalkerRequest:
        s, model = ticket.settings, self.model
        inputs = model.talker_inputs(segment.text, s.voice, s.instruction)
        if inputs.inputs_embeds.shape[0] >= MAX_CACHE_LEN:
            raise ValueError(f"segment {segment.index} needs {inputs.inputs_embeds.shape[0]} prompt tokens")
        ticket.prompt_tokens += inputs.inputs_embeds.shape[0]
        limit = min(max_patches(segment.text, model.seconds_per_patch), remaining)
        generator = torch.Generator().manual_seed(s.segment_seed(segment.index))
        return TalkerRequest(
            inputs.inputs_embeds, inputs.history, sampling=s.sampling, generator=generator, max_steps=limit
        )

    # ---- one step of everything -------------------------------------------------------------
    def _tick(self, starting: list[tuple[SpeechTicket, TalkerRequest]]) -> None:
        """One step of every running batch and of the newcomers' prefill, with ONE flow-head call
        over all their rows (`TalkerGenerator.step_together`); then the newcomers join."""
        batches, owners, newcomers = list(self._batches), [self._tickets_of(b) for b in self._batches], None
        if starting:
            for ticket, request in starting:
                self._owner[id(request)] = ticket
            try:
                newcomers = self.generator.start([r for _, r in starting])
                batches.append(newcomers)
                owners.append([t for t, _ in starting])
            except Exception as exc:
                self._failed([t for t, _ in starting], exc, [])
        if batches:
            t0 = time.monotonic()
            try:
                steps = self.generator.step_together(batches)
            except Exception as exc:
                self._failed([t for group in owners for t in group], exc, batches)
                return
            self._on_forward(sum(len(step.rows) for step in steps), time.monotonic() - t0)
            for batch, step in zip(batches, steps, strict=True):
                self._deliver(batch, step)
        if newcomers is not None and not newcomers.done:
            self._admit(newcomers)
        with self._cv:
            self._batches = [b for b in self._batches if not b.done]

    def _failed(self, tickets: list[SpeechTicket], exc: BaseException, batches: list[TalkerBatch]) -> None:
        log.error("speech stage: a talker step of %d requests failed", len(tickets), exc_info=exc)
        with self._cv:
            self._fail(tickets, exc)
            self._batches = [b for b in self._batches if all(b is not x for x in batches)]

    def _deliver(self, batch: TalkerBatch, step: TalkerStep) -> None:
        """Each row's patch (decoded at its decode points) to its ticket."""
        for row, i in enumerate(step.rows):
            request = batch.requests[i]
            ticket = self._owner.get(id(request))
            if ticket is None:  # its decode failed earlier in this step's rows
                continue
            last = step.finished[row]
            ticket.steps += 1
            try:
                samples = self._decode(ticket, step.latents[row], last)
            except Exception as exc:
                log.exception("speech stage: request %s: decoding its audio failed", ticket.request_id)
                with self._cv:
                    self._remove(ticket)
                    self._fail([ticket], exc)
                continue
            ticket.out.put(
                PatchOut(ticket.active, step.latents[row], samples, last, batch.stop_reasons[i] or "")
            )
            if last:
                del self._owner[id(request)]
                with self._cv:
                    ticket.active = None
                    if ticket.steps >= ticket.settings.max_patches:  # the audio budget is spent
                        more = batch.stop_reasons[i] == "length" or ticket.segments or not ticket.closed
                        ticket.truncated, ticket.closed = bool(more), True
                        ticket.segments.clear()
                    self._cv.notify_all()

    def _decode(self, ticket: SpeechTicket, latents: torch.Tensor, last: bool) -> np.ndarray | None:
        if ticket.audio is None:
            ticket.audio = SegmentAudio(self.model)
        samples = ticket.audio.add(latents, last)
        if last:
            ticket.audio = None  # the next segment starts a fresh VAE stream
        return samples

    def _admit(self, newcomers: TalkerBatch) -> None:
        """Newcomers past their prefill join the running batch (or run beside it)."""
        with self._cv:
            for i, batch in enumerate(self._batches):
                if not batch.done and self.generator.can_join(batch) and self.generator.can_join(newcomers):
                    self._batches[i] = self.generator.join(batch, newcomers)
                    return
            self._batches.append(newcomers)

    def _tickets_of(self, batch: TalkerBatch) -> list[SpeechTicket]:
        owners = (self._owner.get(id(batch.requests[i])) for i in batch.rows)
        return list(dict.fromkeys(t for t in owners if t is not None))

    def _fail(self, tickets: list[SpeechTicket], exc: BaseException) -> None:
        """End these tickets "failed" (lock held)."""
        for ticket in tickets:
            ticket.error = exc
            for key in [k for k, t in self._owner.items() if t is ticket]:
                del self._owner[key]
            self._end(ticket, "failed")
        self._tickets = [t for t in self._tickets if not t.done.is_set()]

    def _end(self, ticket: SpeechTicket, outcome: str) -> None:
        if ticket.done.is_set():
            return
        ticket.outcome = outcome
        ticket.done.set()
        ticket.out.put(None)
