"""This process's rank in a tensor/expert-parallel group, and the collectives the parallel layers use.

A model is built for one rank under `building(group)`: each parallel layer reads `current_group()`
when it is constructed and keeps it, so families build their module trees as they always do and
the same tree serves one rank or many. Outside `building` the group is `SINGLE` (one rank, every
collective a no-op). `join_group` joins torch.distributed (gloo on CPU, NCCL on CUDA) by TCP
rendezvous; the launcher / worker decides ranks and addresses. Step messages (rank 0 -> the others)
always travel over a gloo group on the CPU, the layers' collectives over the compute backend.
"""

from __future__ import annotations

import contextvars
import pickle
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelConfig:
    """How one logical model spreads over ranks: `tensor_parallel_size` ranks in one group, experts
    split by width on every rank (tensor parallel) or whole experts per rank (`expert_parallel`)."""

    tensor_parallel_size: int = 1
    expert_parallel: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.tensor_parallel_size, bool) or self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size!r}")


@dataclass(frozen=True, eq=False)
class TensorGroup:
    """Rank `rank` of `size`; `pg` the process group (None when size is 1)."""

    rank: int
    size: int
    expert_parallel: bool = False
    pg: dist.ProcessGroup | None = None
    control: dist.ProcessGroup | None = None  # gloo (CPU) group for step messages; pg itself on CPU
    # payload bytes per kind of collective since the last clear() (bench/parallel.py reads it)
    traffic: Counter[str] = field(default_factory=Counter)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place; every rank gets the same bits."""
        if self.size > 1:
            dist.all_reduce(x, group=self.pg)
            self.traffic["all_reduce"] += x.numel() * x.element_size()
        return x

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank (pickled over the CPU control group; tensors must be on CPU)."""
        if self.size == 1:
            return obj
        size = torch.zeros(1, dtype=torch.int64)
        if self.is_first:
            data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
            size[0] = data.numel()
        dist.broadcast(size, src=0, group=self.control)
        if not self.is_first:
            data = torch.empty(int(size[0]), dtype=torch.uint8)
        dist.broadcast(data, src=0, group=self.control)
        self.traffic["broadcast"] += data.numel()
        return obj if self.is_first else pickle.loads(data.numpy().tobytes())

    def agree_min(self, value: int) -> int:
        """The smallest of every rank's `value` (e.g. how many KV blocks fit), on every rank."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control)
        return int(t.item())

    def gather_columns(self, local: torch.Tensor, widths: list[int]) -> torch.Tensor | None:
        """[..., widths[rank]] on each rank -> [..., sum(widths)] on rank 0 (rank order); None on the
        others (only rank 0 samples, so only it receives the logits)."""
        if self.size == 1:
            return local
        pad = max(widths) - local.shape[-1]
        padded = torch.nn.functional.pad(local, (0, pad)).contiguous() if pad else local.contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.size)] if self.is_first else None
        dist.gather(padded, parts, dst=0, group=self.pg)
        self.traffic["gather"] += padded.numel() * padded.element_size()  # this rank's part
        if parts is None:
            return None
        return torch.cat([p[..., :w] for p, w in zip(parts, widths, strict=True)], dim=-1)


SINGLE = TensorGroup(0, 1)
_CURRENT: contextvars.ContextVar[TensorGroup] = contextvars.ContextVar("tensor_group", default=SINGLE)


def current_group() -> TensorGroup:
    """The group a layer constructed now belongs to (`SINGLE` outside `building`)."""
    return _CURRENT.get()


@contextmanager
def building(group: TensorGroup) -> Iterator[TensorGroup]:
    """Construct a model for `group`'s rank inside this block."""
    token = _CURRENT.set(group)
    try:
        yield group
    finally:
        _CURRENT.reset(token)


def join_group(
    config: ParallelConfig,
    rank: int,
    master_addr: str,
    master_port: int,
    backend: str | None = None,
    timeout_s: float = 600.0,
    init_method: str | None = None,
) -> TensorGroup:
    """Join the torch.distributed group of `config.tensor_parallel_size` ranks (every process of it,
    on one machine or several) as `rank`.

    `backend` None: NCCL when CUDA is available, else gloo. `init_method` None: TCP rendezvous at
    master_addr:master_port (rank 0 hosts it); "env://" under torchrun, whose agent hosts it."""
    size = config.tensor_parallel_size
    if size == 1:
        return TensorGroup(0, 1, config.expert_parallel)
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside a group of {size}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a rank group (one model group per process)")
    dist.init_process_group(
        backend,
        init_method=init_method or f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=size,
        timeout=timedelta(seconds=timeout_s),
    )
    world_group = dist.group.WORLD
    control = world_group if backend == "gloo" else dist.new_group(backend="gloo")
    return TensorGroup(rank, size, config.expert_parallel, world_group, control)


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
