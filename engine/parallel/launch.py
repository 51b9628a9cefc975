"""Start a group of ranks on this machine: `run_local_group(fn, size, *args)` spawns `size`
processes, joins them into one gloo (CPU) or NCCL (CUDA) group and returns what `fn(group, *args)`
returned on each rank, in rank order. A rank that raises ends the whole group (the others are
killed, since they would wait in a collective forever) and its traceback is raised here.
Used by the offline API and the tests; `fn` must be importable (a module-level function).
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from engine.parallel.group import ParallelConfig, join_group, leave_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(
    rank: int, config: ParallelConfig, port: int, threads: int, fn: Callable, args: tuple, results: Any
) -> None:
    torch.set_num_threads(threads)
    if torch.cuda.is_available():  # NCCL: one device per rank, set before the group is joined
        torch.cuda.set_device(rank % torch.cuda.device_count())
    try:
        group = join_group(config, rank, "127.0.0.1", port, timeout_s=120)
        # plain pickle bytes: torch's queue would pass tensors as shared-memory handles, which die
        # with this process if it exits before the parent has read them
        results.put((rank, True, pickle.dumps(fn(group, *args))))
    except BaseException:  # reported to the parent, which ends the group
        results.put((rank, False, traceback.format_exc()))
    finally:
        leave_group()


def run_local_group(
    fn: Callable[..., Any],
    size: int,
    *args: Any,
    expert_parallel: bool = False,
    threads: int | None = None,
    timeout_s: float = 300.0,
) -> list[Any]:
    """fn(group, *args) on `size` local ranks -> [result of rank 0, rank 1, ...]."""
    config = ParallelConfig(size, expert_parallel)
    threads = threads or max(1, (os.cpu_count() or 1) // size)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(rank, config, port, threads, fn, args, results), daemon=True)
        for rank in range(size)
    ]
    for p in procs:
        p.start()
    got: dict[int, Any] = {}
    try:
        while len(got) < size:
            try:
                rank, ok, value = results.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"rank group of {size} gave no result within {timeout_s:.0f} s") from None
            if not ok:
                raise RuntimeError(f"rank {rank} of {size} failed:\n{value}")
            got[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10 if len(got) == size else 0)
            if p.is_alive():
                p.kill()
                p.join()
    return [got[r] for r in range(size)]
