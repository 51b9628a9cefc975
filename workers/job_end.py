"""How a job that is more than one engine request ends: its deadline, checked while its thread waits
(`JobDeadline`), and its abort for the `Aborter` made exclusive with its completion (`ExclusiveEnd`),
so the request ends exactly once, whichever comes first. Image jobs, speech jobs and spoken chat
replies use both."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipelines.clock import server_now
from pipelines.protocol import ErrorCode, EventType, GenerateJob
from workers import redelivery
from workers.emitter import Flight

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime


class JobDeadline:
    """The job's deadline, checked while its task thread waits (the runtime's own deadline wait starts
    only after the job returns): once passed, the request ends DEADLINE_EXCEEDED, once."""

    def __init__(self, runtime: WorkerRuntime, job: GenerateJob, flight: Flight) -> None:
        self.runtime, self.flight = runtime, flight
        self.at = redelivery.job_deadline(job)

    def check(self) -> None:
        if self.at is not None and server_now() >= self.at:
            self.at = None  # once
            self.runtime.stop_request(
                self.flight, EventType.CANCELLED, ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed"
            )


class ExclusiveEnd:
    """The request's abort (call it: what the Aborter registers) and its completion (`complete`),
    mutually exclusive. `on_abort` runs once, after the abort won."""

    def __init__(self, on_abort: Callable[[], object]) -> None:
        self._on_abort = on_abort
        self._lock = threading.Lock()
        self.cancelled = self.completed = False

    def __call__(self) -> bool:
        """End the request early; True exactly once, and never after it completed."""
        with self._lock:
            if self.cancelled or self.completed:
                return False
            self.cancelled = True
        self._on_abort()
        return True

    def complete(self) -> bool:
        """True if the job may write its result (no abort came first)."""
        with self._lock:
            if self.cancelled:
                return False
            self.completed = True
            return True
