"""The ranks other than 0: each loads its share of the model, allocates its share of the KV cache
(the same block count everywhere: the smallest any rank can hold) and runs what rank 0 broadcasts
(`ModelRunner.follow`) until rank 0 says stop.

`follow_rank` is the whole life of one follower (a process started by `NodeRanks`, or by torchrun).
`NodeRanks` starts the ranks a `GroupPlacement` puts on this machine and, on node 0, joins the
caller in as rank 0: on CUDA each rank uses its local device, on CPU the cores are shared out. A
follower whose rank 0 disappears fails its next collective and exits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.kv_cache import KVCacheSpec
from engine.model_loader import load_model
from engine.model_runner import ModelRunner
from engine.parallel.group import ParallelConfig, TensorGroup, join_group, leave_group
from engine.parallel.launch import free_port
from engine.parallel.placement import GroupPlacement

log = logging.getLogger(__name__)


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """CUDA: one device per local rank; CPU: the CPU."""
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def follow_rank(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    kv: KVCacheSpec,
    parallel: ParallelConfig,
    rank: int,
    master_addr: str,
    master_port: int,
    init_method: str | None = None,
) -> None:
    """Join the group as `rank`, serve rank 0's steps on `path` until stop, leave the group."""
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL sees this process
    group = join_group(parallel, rank, master_addr, master_port, init_method=init_method)
    try:
        serve_as_follower(path, device, dtype, kv, group)
    finally:
        leave_group()


def serve_as_follower(
    path: str | Path, device: torch.device, dtype: torch.dtype, kv: KVCacheSpec, group: TensorGroup
) -> None:
    """Load this rank's share of `path`, agree on the KV block count, run steps until rank 0's stop
    (its engine's `close()`); the group stays joined for whatever comes next."""
    model = load_model(path, device, dtype, group)
    cache = kv.allocate(model.runtime, dtype, device, group.agree_min)
    ModelRunner(model, cache, None, device, group).follow()


class NodeRanks:
    """The ranks `placement` puts on this machine other than rank 0, as child processes
    (`python -m engine.parallel.follower_main`, so a caller's script needs no `__main__` guard). When
    rank 0 is on this machine the caller joins as rank 0 (`group`), else `group` is None and the
    caller only supervises (`wait`). A child ends when its parent does (it watches its parent id) and,
    failing that, at its next collective; `watch` reports a child that exits on its own."""

    def __init__(
        self, path: Path, device: torch.device, dtype: torch.dtype, kv: KVCacheSpec, placement: GroupPlacement
    ) -> None:
        parallel = placement.parallel
        port = placement.master_port or free_port()
        here = placement.ranks_here()
        threads = max(1, (os.cpu_count() or 1) // len(here))
        self.ranks = [r for r in here if r != 0]
        self.procs: list[subprocess.Popen] = []
        self._closing = threading.Event()
        for rank in self.ranks:
            spec = {
                "path": str(path),
                "device": str(rank_device(device, placement.local_rank(rank))),
                "dtype": str(dtype).removeprefix("torch."),
                "kv": dataclasses.asdict(kv),
                "parallel": dataclasses.asdict(parallel),
                "rank": rank,
                "master_addr": placement.master_addr,
                "master_port": port,
                "threads": threads,
            }
            self.procs.append(
                subprocess.Popen([sys.executable, "-m", "engine.parallel.follower_main", json.dumps(spec)])
            )
        self.group: TensorGroup | None = None
        if placement.has_rank0:
            try:
                self.group = join_group(
                    parallel, 0, placement.master_addr, port, init_method=placement.init_method
                )
            except BaseException:
                self.close(timeout_s=0)
                raise

    def watch(self, on_exit: Callable[[int, int], None], poll_s: float = 0.2) -> None:
        """Call on_exit(rank, exit code) once, from a daemon thread, if a child ends before close()."""

        def poll() -> None:
            while not self._closing.wait(poll_s):
                for rank, p in zip(self.ranks, self.procs, strict=True):
                    if p.poll() is not None and not self._closing.is_set():
                        on_exit(rank, p.returncode)
                        return

        threading.Thread(target=poll, name="bailing-rank-watch", daemon=True).start()

    def wait(self) -> int:
        """A machine without rank 0: block until a child ends, end the others; the worst exit code."""
        while all(p.poll() is None for p in self.procs):
            time.sleep(0.2)
        self.close(timeout_s=5)
        return max((abs(p.returncode or 0) for p in self.procs), default=0)

    def close(self, timeout_s: float = 30.0) -> None:
        self._closing.set()
        for p in self.procs:
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.group is not None:
            leave_group()
