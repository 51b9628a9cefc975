"""The engine's own thread: the loop that runs `step()` while there is work and the side loops'
rounds between steps (`engine.side_loops`), and the lock discipline that keeps callers from waiting
several steps for the engine lock. Mixed into `LLMEngine`, whose state it drives.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from engine.side_loops import SideLoops

log = logging.getLogger("engine.engine")


class EngineThread:
    """Needs the engine's `_lock` (RLock), `_wake` (its Condition), `_gate`, `_queued`, `_thread`,
    `_stop`, `scheduler`, `side_loops`, `_requests`, `group`, `step()`, `fail_all()` and `group_failed()`."""

    _lock: threading.RLock
    _wake: threading.Condition
    _gate: threading.Condition
    _queued: int
    _thread: threading.Thread | None
    _stop: bool
    scheduler: Any
    side_loops: SideLoops
    _requests: dict[str, Any]
    step: Any  # LLMEngine.step
    fail_all: Any  # LLMEngine.fail_all
    group: Any  # the engine's TensorGroup
    group_failed: Any  # LLMEngine.group_failed

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The engine lock for a caller that is not the loop: the loop lets queued callers in first.

        Without this the loop thread, which releases the lock after a step and takes it straight
        back, can keep an `abort` or `add_request` waiting for several steps.
        """
        with self._gate:
            self._queued += 1
        try:
            self._lock.acquire()
        finally:
            with self._gate:
                self._queued -= 1
                if not self._queued:
                    self._gate.notify_all()
        try:
            yield
        finally:
            self._lock.release()

    def _let_callers_in(self, timeout: float = 0.1) -> None:
        with self._gate:
            self._gate.wait_for(lambda: not self._queued, timeout)

    def start(self) -> None:
        """Run steps on a daemon thread until `shutdown()`."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="bailing-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def wake(self) -> None:
        """A side loop has work (see `engine.side_loops`)."""
        with self._lock:
            self._wake.notify_all()

    def _loop(self) -> None:
        while True:
            self._let_callers_in()
            with self._lock:
                while not self._stop and not self.scheduler.has_work():
                    delay = self.side_loops.delay()
                    if delay is not None and (delay <= 0 or not self._wake.wait(delay)):
                        break  # a side loop's turn (due now, or its look-again time passed)
                    if delay is None:
                        self._wake.wait()
                if self._stop:
                    return
                stepping = self.scheduler.has_work()
            if stepping:
                self._step_or_fail()
            self.side_loops.run()

    def _step_or_fail(self) -> None:
        try:
            self.step()
        except Exception as exc:  # a failed step must not strand every request waiting on it
            if self.group.size > 1:  # the ranks may now disagree on where they are: the group is over
                log.exception("engine step failed on a rank group")
                self.group_failed(f"a step failed: {type(exc).__name__}: {exc}")
                return
            log.exception("engine step failed; failing the %d requests in flight", len(self._requests))
            self.fail_all(f"engine step failed: {type(exc).__name__}: {exc}")
