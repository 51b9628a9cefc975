"""The ranks other than 0: each loads its share of the model, allocates its share of the KV cache
(the same block count everywhere: the smallest any rank can hold) and runs what rank 0 broadcasts
(`ModelRunner.follow`) until rank 0 says stop.

`follow_rank` is the whole life of one follower (a process started by `LocalFollowers`, by
`bailing worker` on another node, or by torchrun). `LocalFollowers` starts ranks 1..N-1 on this
machine and joins the caller in as rank 0: on CUDA rank r uses device r, on CPU the cores are
shared out. A follower whose rank 0 disappears fails its next collective and exits.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from engine.kv_cache import KVCacheSpec, PagedKVCache
from engine.model_loader import load_model
from engine.model_runner import ModelRunner
from engine.parallel.group import ParallelConfig, TensorGroup, join_group, leave_group
from engine.parallel.launch import free_port

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
    world_size: int | None = None,
) -> None:
    """Join the group as `rank`, serve rank 0's steps on `path` until stop, leave the group."""
    group = join_group(parallel, rank, master_addr, master_port, world_size=world_size)
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
    rt = model.runtime
    blocks = group.agree_min(kv.blocks_for(rt.num_layers, rt.num_kv_heads, rt.head_dim, dtype, device))
    cache = PagedKVCache(rt.num_layers, blocks, kv.block_size, rt.num_kv_heads, rt.head_dim, dtype, device)
    ModelRunner(model, cache, None, device, group).follow()


class LocalFollowers:
    """Ranks 1..N-1 as child processes (`python -m engine.parallel.follower_main`, so a caller's script
    needs no `__main__` guard); the caller becomes rank 0 (`group`). A child dies with its parent
    (Linux parent-death signal) and, failing that, at its next collective."""

    def __init__(
        self, path: Path, device: torch.device, dtype: torch.dtype, kv: KVCacheSpec, parallel: ParallelConfig
    ) -> None:
        size = parallel.tensor_parallel_size
        port = free_port()
        threads = max(1, (os.cpu_count() or 1) // size)
        self.procs = []
        for rank in range(1, size):
            spec = {
                "path": str(path),
                "device": str(rank_device(device, rank)),
                "dtype": str(dtype).removeprefix("torch."),
                "kv": dataclasses.asdict(kv),
                "parallel": dataclasses.asdict(parallel),
                "rank": rank,
                "master_addr": "127.0.0.1",
                "master_port": port,
                "threads": threads,
            }
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "engine.parallel.follower_main", json.dumps(spec)],
                    preexec_fn=_die_with_parent,
                )
            )
        try:
            self.group = join_group(parallel, 0, "127.0.0.1", port)
        except BaseException:
            self.close(timeout_s=0)
            raise

    def close(self, timeout_s: float = 30.0) -> None:
        for p in self.procs:
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        leave_group()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
