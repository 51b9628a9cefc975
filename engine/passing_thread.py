"""Run a piece of CPU torch work on a thread that ends with it, so the engine's step stays fast.

Why: torch's CPU kernels parallelise with OpenMP (GNU libgomp), which keeps one pool of worker
threads per thread that has ever run a parallel region, for as long as that thread lives. Once the
pools' threads outnumber the cores, libgomp stops letting idle workers spin and puts them to sleep
after each region, so every parallel region of every thread pays a futex wake-up. Measured on a
2-vCPU Xeon (bench/RESULTS.md, "One thread computes"): a small softmax went from 0.041 to
0.288 ms, and a 128-token prefill of the bench model on the engine's thread from 50 to 114 ms,
merely because the thread that loaded the model had run parallel regions and was still alive.

So work that runs before, beside or for the engine's loop (loading the model, allocating the KV
cache, a request's media encoders) goes through `in_passing_thread`: its pool ends with it, and
the long-lived threads that do parallel torch work are the engine's own (and the caller's, when
the caller steps the engine itself, as `LLM` does).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_passing_thread(
    fn: Callable[..., T], *args: object, name: str = "bailing-passing", **kwargs: object
) -> T:
    """`fn(*args, **kwargs)` on a new thread that ends when it returns; its result, or its exception
    re-raised here (with the original traceback). The caller waits, so this is for work the caller
    would have waited for anyway. `fn` sees the caller's context variables (e.g. the tensor group
    a model is being built for) and its own thread-local state (grad mode: enter `torch.inference_mode`
    inside `fn`)."""
    box: dict[str, object] = {}
    context = contextvars.copy_context()

    def run() -> None:
        try:
            box["result"] = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the caller as is
            box["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
