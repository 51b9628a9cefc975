"""Process-tree helpers for the stack tests: which processes exist, which are still alive."""

from __future__ import annotations

import psutil


def process_tree(pids: list[int]) -> list[psutil.Process]:
    """The processes `pids` and all their descendants that exist now."""
    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


def still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `procs` that are alive (zombies count as gone: they hold no resources)."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive
