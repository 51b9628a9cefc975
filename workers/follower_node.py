"""A machine (or, under torchrun, a process) that hosts only follower ranks of a worker group: no
Celery consumer, no Redis; it loads its shares of the model and runs the steps rank 0 broadcasts.
It ends when rank 0 ends the group or one of its ranks dies (then the rest are ended too), so a
broken group never half-serves: rank 0's worker exits and its jobs are redelivered (late ack)."""

from __future__ import annotations

import logging
import os

import torch

from engine.engine import EngineConfig
from engine.model_loader import resolve_dtype
from engine.parallel.followers import NodeRanks, follow_rank, rank_device
from workers.config import WorkerConfig

log = logging.getLogger(__name__)


def serve_follower_ranks(config: WorkerConfig) -> int:
    """Run this machine's follower ranks until the group ends; returns the exit code."""
    placement = config.placement(os.environ)
    device = torch.device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    kv = EngineConfig(kv_cache_bytes=config.kv_cache_bytes).kv_spec  # block size / budget as rank 0's
    log.info(
        "follower ranks %s of a group of %d", placement.ranks_here(), placement.parallel.tensor_parallel_size
    )
    if placement.only_rank is not None:  # torchrun started this process as exactly one rank
        rank = placement.only_rank
        follow_rank(
            config.model_dir,
            rank_device(device, placement.local_rank(rank)),
            dtype,
            kv,
            placement.parallel,
            rank,
            placement.master_addr,
            placement.master_port or 0,
            init_method=placement.init_method,
        )
        return 0
    return NodeRanks(config.model_dir, device, dtype, kv, placement).wait()
