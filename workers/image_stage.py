"""ImageStage: the one thread that runs the denoising loop of every image request of this process.

Flow: a task thread `submit`s a `DenoiseJob` (with a progress callback and a `stopped()` probe) and
waits on its ticket -> the stage loop takes every job in flight, drops the stopped ones (cancel,
deadline, shutdown: within one step, their tensors freed), and advances the rest by one step with
ONE DiT forward per compatible group (`ImageGenerator.step`), then reports each job's progress;
finished jobs go back to their task thread, which decodes and encodes them itself, so the stage
keeps stepping the others. It runs outside the engine lock: thinker prefills and text decoding go on
beside it. A failed forward fails the jobs of that step (their tickets carry the error), not the stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from models.ming.generation.denoise import DenoiseJob, groups
from models.ming.generation.generator import ImageGenerator

log = logging.getLogger(__name__)

OnStep = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass(eq=False)
class Ticket:
    """One submitted job: the task thread waits on `done`; `outcome` says how it ended."""

    job: DenoiseJob
    on_step: OnStep
    stopped: Callable[[], bool]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""  # "finished", "stopped" or "failed"
    error: BaseException | None = None
    seconds: float = 0.0  # wall time from submit to the end

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


class ImageStage:
    def __init__(
        self, generator: ImageGenerator, on_forward: Callable[[int, float], None] | None = None
    ) -> None:
        self.generator = generator
        self._on_forward = on_forward or (lambda images, seconds: None)
        self._tickets: list[Ticket] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="bailing-image-stage", daemon=True)
        self._started: dict[int, float] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the loop; jobs still in flight end "stopped"."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=30)
        with self._cv:
            for ticket in self._tickets:
                self._end(ticket, "stopped")
            self._tickets.clear()

    def submit(self, job: DenoiseJob, on_step: OnStep, stopped: Callable[[], bool]) -> Ticket:
        ticket = Ticket(job, on_step, stopped)
        with self._cv:
            if self._stop:
                self._end(ticket, "stopped")
                return ticket
            self._started[id(ticket)] = time.monotonic()
            self._tickets.append(ticket)
            self._cv.notify_all()
        return ticket

    def __len__(self) -> int:
        with self._cv:
            return len(self._tickets)

    # ---- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._tickets:
                    self._cv.wait()
                if self._stop:
                    return
                active = self._sweep()
            if active:
                self._tick(active)

    def _sweep(self) -> list[Ticket]:
        """Drop stopped and finished tickets (lock held); the rest step now."""
        keep = []
        for ticket in self._tickets:
            if ticket.stopped():
                self._end(ticket, "stopped")
            elif ticket.job.done:
                self._end(ticket, "finished")
            else:
                keep.append(ticket)
        self._tickets = keep
        return list(keep)

    def _tick(self, active: list[Ticket]) -> None:
        by_job = {id(t.job): t for t in active}
        for group in groups(self.generator.variant, [t.job for t in active]):
            tickets = [by_job[id(job)] for job in group]
            t0 = time.monotonic()
            try:
                self.generator.step(group)
            except Exception as exc:  # a failed forward ends its own jobs, never the stage
                log.exception("image stage: a denoising step of %d requests failed", len(group))
                with self._cv:
                    for ticket in tickets:
                        ticket.error = exc
                        self._end(ticket, "failed")
                    self._tickets = [t for t in self._tickets if not t.done.is_set()]
                continue
            self._on_forward(sum(j.latents.shape[0] for j in group), time.monotonic() - t0)
            for ticket in tickets:
                self._progress(ticket)

    def _progress(self, ticket: Ticket) -> None:
        try:
            ticket.on_step(ticket.job.step, ticket.job.steps)
        except Exception:  # a progress callback must not stall the others
            log.exception("image stage: progress callback failed")
        if ticket.job.done:
            with self._cv:
                if ticket in self._tickets:
                    self._tickets.remove(ticket)
                    self._end(ticket, "finished")

    def _end(self, ticket: Ticket, outcome: str) -> None:
        if ticket.done.is_set():
            return
        ticket.outcome = outcome
        ticket.seconds = time.monotonic() - self._started.pop(id(ticket), time.monotonic())
        ticket.done.set()
