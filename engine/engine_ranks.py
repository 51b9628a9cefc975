"""The rank-group side of LLMEngine: start or join the group the model is split over, notice when it
breaks, end it with the engine.

A mixin like `EngineThread`: it needs the engine's `config`, `path`, `device`, `dtype`, `_lock`,
`runner`, `shutdown()` and `fail_all()`. With one rank all of this is a no-op. A broken group (a
rank exited, a step failed with ranks that may now disagree) cannot be repaired in place: the
engine calls `on_group_failure(why)` when it has one (a worker ends its process, so its jobs are
redelivered), else it fails every request in flight and refuses new ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engine.parallel.followers import NodeRanks
from engine.parallel.group import SINGLE, TensorGroup
from engine.parallel.placement import GroupPlacement

log = logging.getLogger(__name__)


class RankGroupOwner:
    config: Any
    path: Any
    device: Any
    dtype: Any
    runner: Any
    _lock: Any
    shutdown: Any
    fail_all: Any

    def _join_group(
        self,
        group: TensorGroup | None,
        placement: GroupPlacement | None,
        on_group_failure: Callable[[str], None] | None,
    ) -> TensorGroup:
        """The group to build the model for: `group` as given, else (tensor_parallel_size > 1) this
        machine's other ranks started as processes with this one as rank 0, else one rank."""
        self.ranks: NodeRanks | None = None  # this machine's other ranks, when the engine started them
        self.on_group_failure = on_group_failure
        self._broken: str | None = None
        if group is None and self.config.tensor_parallel_size > 1:
            where = placement or GroupPlacement(self.config.parallel)
            self.ranks = NodeRanks(self.path, self.device, self.dtype, self.config.kv_spec, where)
            group = self.ranks.group
        group = group or SINGLE
        self._followers_running = group.size > 1
        return group

    def _watch_ranks(self) -> None:
        if self.ranks is not None:
            self.ranks.watch(lambda rank, code: self.group_failed(f"rank {rank} exited with code {code}"))

    def _end_ranks(self) -> None:
        if self.ranks is not None:
            self.ranks.close()
            self.ranks = None

    def close(self) -> None:
        """Stop the loop thread and, over several ranks, the follower ranks (idempotent)."""
        self.shutdown()
        if self._followers_running and self._broken is None:
            self._followers_running = False
            with self._lock:
                self.runner.stop_followers()
        self._end_ranks()

    def group_failed(self, why: str) -> None:
        """The rank group is broken: no step can run any more."""
        if self._broken is not None:
            return
        self._broken = why
        log.critical("rank group failed: %s", why)
        if self.on_group_failure is not None:
            self.on_group_failure(why)
            return
        self.fail_all(f"the model's rank group failed: {why}")
