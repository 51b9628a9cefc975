"""Side loops: other per-step work that shares the engine's thread (a talker's AR loop, say).

Why one thread: on a CPU, every thread that runs torch ops owns an OpenMP team, and once the teams
hold more threads than there are cores, libgomp stops spinning between parallel regions. Every
parallel op then pays a futex wake-up. On the 2-core machines we measured, a 64x64 matmul took 13 µs
in the only team and 215 µs beside a second team, and a speech request ran 1.8x slower than the same
loop alone. One thread for the engine's steps and its side loops' steps keeps one team; on a GPU it
keeps one stream of kernels.

A side loop (`SideLoop`) says how soon it wants to run (`delay`: None = nothing to do, 0 = now,
t > 0 = look again within t seconds: it has requests whose stop probes it must watch) and runs one
round in `tick`. The engine thread, between its own steps, ticks every loop that is due. It waits
while neither it nor a loop has work. A loop that gets work calls `LLMEngine.wake()`, never while
holding a lock that its `delay` takes: the engine calls `delay` with its own lock held.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)


class SideLoop(Protocol):
    def delay(self) -> float | None: ...

    def tick(self) -> None: ...


class SideLoops:
    def __init__(self) -> None:
        self._loops: list[SideLoop] = []
        self._lock = threading.Lock()

    def attach(self, loop: SideLoop) -> None:
        with self._lock:
            self._loops.append(loop)

    def detach(self, loop: SideLoop) -> None:
        with self._lock:
            self._loops = [x for x in self._loops if x is not loop]

    def delay(self) -> float | None:
        """How long the engine may wait before a side loop wants its turn (None: forever)."""
        delays = [d for d in (loop.delay() for loop in self._current()) if d is not None]
        return min(delays) if delays else None

    def run(self) -> None:
        """A round of every loop with something in hand (engine thread, engine lock not held): a due
        one steps, a waiting one looks at its stop probes. Never raises."""
        for loop in self._current():
            try:
                if loop.delay() is not None:
                    loop.tick()
            except Exception:  # a side loop's failure must not stop the engine's steps
                log.exception("side loop %r failed", loop)

    def _current(self) -> list[SideLoop]:
        with self._lock:
            return list(self._loops)
