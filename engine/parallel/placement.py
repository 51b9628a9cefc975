"""Where the ranks of one group run: which machine, which local device, which rendezvous address.

A group of N = tensor_parallel_size ranks spans `nnodes` machines with N / nnodes ranks each (node r
holds ranks r*n .. r*n+n-1, on local devices 0..n-1); rank 0 (the scheduler, the only Celery
consumer) lives on node 0, whose address is the rendezvous (`master_addr:master_port`). Launched
by torchrun instead, each process is exactly one rank and says which in its environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): `from_torchrun` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.parallel.group import ParallelConfig

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class GroupPlacement:
    parallel: ParallelConfig
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None: any free port (a single node only)
    only_rank: int | None = None  # torchrun: this process is this one rank
    local_rank_of_only: int = 0

    def __post_init__(self) -> None:
        size = self.parallel.tensor_parallel_size
        if isinstance(self.nnodes, bool) or self.nnodes < 1 or size % self.nnodes:
            raise ValueError(
                f"nnodes ({self.nnodes}) must be >= 1 and divide the tensor-parallel size ({size})"
            )
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in [0, nnodes={self.nnodes}), got {self.node_rank}")
        if self.master_port is None and self.nnodes > 1:
            raise ValueError("a group over several nodes needs master_port (and master_addr) set")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ValueError(f"master_port must be in 1..65535, got {self.master_port}")

    @classmethod
    def from_torchrun(cls, env: Mapping[str, str], expert_parallel: bool = False) -> GroupPlacement | None:
        """The placement torchrun's environment describes (None when not launched by torchrun)."""
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", rank))
            port = int(env.get("MASTER_PORT", "29500"))
        except ValueError:
            raise ValueError(f"torchrun variables {TORCHRUN_VARS} must be integers where numeric") from None
        return cls(
            ParallelConfig(world, expert_parallel),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=port,
            only_rank=rank,
            local_rank_of_only=local,
        )

    @property
    def ranks_per_node(self) -> int:
        return self.parallel.tensor_parallel_size // self.nnodes

    def ranks_here(self) -> list[int]:
        """The ranks this machine (or, under torchrun, this process) runs."""
        if self.only_rank is not None:
            return [self.only_rank]
        n = self.ranks_per_node
        return list(range(self.node_rank * n, (self.node_rank + 1) * n))

    def local_rank(self, rank: int) -> int:
        """The device index of `rank` on its machine."""
        if self.only_rank is not None:
            return self.local_rank_of_only
        return rank - self.node_rank * self.ranks_per_node

    @property
    def init_method(self) -> str | None:
        """How ranks meet: torchrun's agent already hosts the rendezvous store ("env://"); else None,
        a TCP rendezvous that rank 0 hosts at master_addr:master_port."""
        return "env://" if self.only_rank is not None else None

    @property
    def has_rank0(self) -> bool:
        return 0 in self.ranks_here()
