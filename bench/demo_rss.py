"""Resident memory of `bailing up`'s demo stack: what the first run costs a laptop.

Flow: `Stack` (the same launcher `bailing up` uses: embedded Valkey, the gateway with its HTTP API, a
worker per demo model) on free ports in a temporary folder -> RSS of every child's process tree once
all are serving ("idle") -> one short chat to each model that answers text, through the gateway ->
RSS again ("after a chat each") -> a markdown table with the total against the issue's target (3 GiB
for the workers, gateway and Valkey together). A process tree counts the child and its descendants
(a worker's compile helpers, Valkey's server under its wrapper).

RSS counts a shared page in every process that maps it: torch's libraries alone are ~0.5 GiB of RSS
in each worker, but one copy in memory. PSS (proportional set size: a page shared by k processes
counts 1/k in each) sums to the memory the stack really takes, so the target is judged on PSS; RSS
and USS (pages no other process shares) are reported beside it.

Usage: python -m bench.demo_rss [--json]   (make bench-demo-rss)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import psutil
import torch

from bench.harness import REPO, git_state, log, machine_info, report

TARGET_GIB = 3.0
CHAT_MODELS = ("ling", "ring", "llada2", "ming", "ming2")


def tree_memory(pid: int | None) -> dict[str, int]:
    """rss, pss, uss (bytes) and processes of `pid` and its descendants (zeros if it is gone)."""
    out = {"rss": 0, "pss": 0, "uss": 0, "processes": 0}
    if pid is None:
        return out
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            mem = p.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        out["rss"] += mem.rss
        out["pss"] += mem.pss
        out["uss"] += mem.uss
        out["processes"] += 1
    return out


def snapshot(stack: Any) -> dict[str, dict[str, int]]:
    return {child.name: tree_memory(child.pid) for child in stack.all_children()}


def chat_each(stack: Any) -> None:
    from bailing.client import Client

    with Client(stack.address, timeout=300) as client:
        for model in CHAT_MODELS:
            if model in stack.models:
                client.generate(model, messages=[{"role": "user", "content": "hello"}], max_tokens=16)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    idle, used = result["idle"], result["after_chat"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; git {result['git']}; "
        f"`bailing up` with every demo model ({', '.join(result['models'])}); the memory of each "
        "child's process tree.",
        "",
        "| process | PSS idle (MiB) | PSS after a chat each (MiB) | RSS after (MiB) | USS after (MiB) "
        "| processes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    zero = {"rss": 0, "pss": 0, "uss": 0}
    for name in idle:
        a, b = idle[name], used.get(name, zero)
        lines.append(
            f"| {name} | {a['pss'] / 2**20:.0f} | {b['pss'] / 2**20:.0f} | {b['rss'] / 2**20:.0f} "
            f"| {b['uss'] / 2**20:.0f} | {a['processes']} |"
        )

    def total(snap: dict[str, dict[str, int]], key: str) -> float:
        return sum(v[key] for v in snap.values()) / 2**30

    met = "met" if total(used, "pss") < TARGET_GIB else "**not met**"
    lines.append(
        f"| **total** | **{total(idle, 'pss'):.2f} GiB** | **{total(used, 'pss'):.2f} GiB** "
        f"| {total(used, 'rss'):.2f} GiB | {total(used, 'uss'):.2f} GiB | |"
    )
    lines += ["", f"Target: under {TARGET_GIB:g} GiB (PSS) in all after the chats: {met}."]
    return "\n".join(lines)


def main() -> None:
    from bailing.stack import Stack

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout, the rest on stderr")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Stack(port=0, http_port=0, dir=tmp, log=log) as stack:
        time.sleep(3)  # the workers' post-start work (decode-graph compiles) settles
        idle = snapshot(stack)
        chat_each(stack)
        time.sleep(1)
        after = snapshot(stack)
        models = list(stack.models)
    result = {
        "machine": machine_info(torch.device("cpu")),
        "git": git_state(),
        "models": models,
        "idle": idle,
        "after_chat": after,
        "total_s": time.perf_counter() - t0,
    }
    table = markdown(result)
    report("demo_rss", False, result, table, args.json)
    (REPO / "bench" / "results" / "demo_rss.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
