"""`python -m engine.parallel.follower_main '<json spec>'`: run one follower rank (how `LocalFollowers`
starts ranks 1..N-1; a module of its own so that running it does not re-import itself)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import torch

from engine.kv_cache import KVCacheSpec
from engine.parallel.followers import follow_rank
from engine.parallel.group import ParallelConfig

log = logging.getLogger(__name__)


def _end_with_parent(poll_s: float = 0.5) -> None:
    """Exit at once when the process that started us is gone (re-parented): a rank without its rank 0
    would otherwise wait in a collective until the group's timeout."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="bailing-parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    """`python -m engine.parallel.followers '<json spec>'`: run one follower rank."""
    spec = json.loads(argv[0])
    _end_with_parent()
    logging.basicConfig(level=logging.INFO, format=f"rank{spec['rank']} %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(spec["threads"])
    try:
        follow_rank(
            spec["path"],
            torch.device(spec["device"]),
            getattr(torch, spec["dtype"]),
            KVCacheSpec(**spec["kv"]),
            ParallelConfig(**spec["parallel"]),
            spec["rank"],
            spec["master_addr"],
            spec["master_port"],
        )
    except Exception:
        log.exception("follower rank %d ended", spec["rank"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
