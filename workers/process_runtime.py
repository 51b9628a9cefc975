"""This process's one WorkerRuntime: built on first use (in a thread that then exits), cached, closed
at shutdown. Celery's guide keeps per-process resources the same way."""

from __future__ import annotations

import threading

from workers.config import WorkerConfig
from workers.runtime import WorkerRuntime

_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime(config: WorkerConfig) -> WorkerRuntime:
    """This process's runtime, loaded and started on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            runtime = _load(config)
            runtime.start()
            _runtime = runtime
        return _runtime


def _load(config: WorkerConfig) -> WorkerRuntime:
    """Build the runtime in a thread that then exits. On a CPU a thread that ran torch ops keeps its
    OpenMP team while it lives, and a second live team makes every parallel op of the engine's thread
    pay a wake-up (`engine.side_loops`); loading's team leaves with its thread."""
    built: list[WorkerRuntime | BaseException] = []

    def build() -> None:
        try:
            built.append(WorkerRuntime(config))
        except BaseException as exc:  # re-raised in the caller's thread
            built.append(exc)

    thread = threading.Thread(target=build, name="bailing-load")
    thread.start()
    thread.join()
    if isinstance(built[0], BaseException):
        raise built[0]
    return built[0]


def close_runtime() -> None:
    global _runtime
    with _runtime_lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.close()
