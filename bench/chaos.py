"""`make chaos`: bounded fault rounds against the local stack while streams and 1,000-item batches run.

The stack is `bailing up`'s (embedded Valkey with its append-only file, gateway, two demo Ling
workers) under its own supervisor, which restarts whatever dies. Round after round, in turn:

- worker-kill:    SIGKILL one worker's process group (the supervisor restarts it);
- gateway-kill:   SIGKILL the gateway (restarted on the same port);
- redis-restart:  stop Valkey (SIGTERM: it writes its AOF) and let the supervisor start it again;
- worker-pause:   SIGSTOP one worker for WORKER_DEAD_AFTER_S + 2 s, then SIGCONT.

Each round starts STREAMS greedy `ignore_eos` streams, injects its fault ~0.5 s later and waits for
every stream to end: complete (all tokens), a retryable status (UNAVAILABLE / ABORTED), another status
(a failure) or no end within the limit (hung). Then it waits for health SERVING. Batches of 1,000
items run throughout (a new one when the last completes); each batch's results, once it completes,
must hold each index at most once, and at the end every batch must hold every index exactly once
(`bench/chaos_batches.py`).

    python -m bench.chaos [--rounds 20] [--kinds worker-kill,gateway-kill,redis-restart,worker-pause]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import tempfile
import time
from pathlib import Path

import torch

from bailing.supervise import RestartPolicy
from bench.chaos_batches import BatchWatch
from bench.harness import REPO, git_state, machine_info, report
from bench.stack_load import Outcome, SupervisedStack, stream_request
from pipelines.protocol import WORKER_DEAD_AFTER_S

KINDS = ("worker-kill", "gateway-kill", "redis-restart", "worker-pause")
STREAMS = 4
MAX_TOKENS = 16
LIMIT_S = 90.0  # a stream with no end by then is hung


def _state(o: Outcome) -> str:
    if o.complete:
        return "complete"
    if o.retryable:
        return "retryable"
    return "hung" if o.code == "HUNG" else "failed"


def inject(stack: SupervisedStack, kind: str, rng: random.Random) -> None:
    if kind == "worker-kill":
        rng.choice(stack.workers()).signal_group(signal.SIGKILL)
    elif kind == "gateway-kill":
        stack.child("gateway").signal_group(signal.SIGKILL)
    elif kind == "redis-restart":
        stack.child("valkey").signal_group(signal.SIGTERM)
    elif kind == "worker-pause":
        worker = rng.choice(stack.workers())
        worker.signal_group(signal.SIGSTOP)
        time.sleep(WORKER_DEAD_AFTER_S + 2.0)
        worker.signal_group(signal.SIGCONT)
    else:
        raise ValueError(kind)


async def _round(stack: SupervisedStack, kind: str, n: int, rng: random.Random) -> list[Outcome]:
    import grpc

    from gateway.api import pb, pb_grpc

    async with grpc.aio.insecure_channel(stack.address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        calls = [
            stream_request(stub, pb, "ling", f"chaos-{n}-{i}", f"Round {n}, stream {i}.", MAX_TOKENS, LIMIT_S)
            for i in range(STREAMS)
        ]
        tasks = [asyncio.create_task(c) for c in calls]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(inject, stack, kind, rng)
        return list(await asyncio.gather(*tasks))


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--rounds", type=int, default=20, help="rounds of each kind (20)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="fault kinds, comma-separated")
    parser.add_argument("--batch-items", type=int, default=1000, help="items per batch (1000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    os.environ["BAILING_COMPILE"] = "0"  # workers restart often here: no background decode compile each time
    rng = random.Random(args.seed)
    # chaos kills children on purpose and often: restart fast, never call it a crash loop
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=2.0, stable_s=5.0, max_streak=10**6)
    stack = SupervisedStack(Path(tempfile.mkdtemp(prefix="bailing-chaos-")), ["ling"], 2, policy=policy)
    started = time.time()
    stack.start()
    counts: dict[str, collections.Counter] = {k: collections.Counter() for k in kinds}
    recovery: dict[str, list[float]] = {k: [] for k in kinds}
    bad: list[str] = []
    batches = BatchWatch(stack, args.batch_items)
    try:
        batches.submit()
        for n in range(args.rounds * len(kinds)):
            kind = kinds[n % len(kinds)]
            outcomes = asyncio.run(_round(stack, kind, n, rng))
            c = counts[kind]
            c["rounds"] += 1
            for o in outcomes:
                c["streams"] += 1
                state = _state(o)
                c[state] += 1
                if state in ("hung", "failed"):
                    bad.append(f"round {n} {kind}: {o.request_id} {o.code} {o.tokens}/{o.wanted} {o.details}")
            recovery[kind].append(stack.wait_serving(timeout=240))
            problems = batches.check_round()
            bad += [f"round {n} {kind}: {p}" for p in problems]
            c["batch_duplicates"] += sum("twice" in p for p in problems)
            print(f"round {n} {kind}: {dict(c)}; back in {recovery[kind][-1]:.1f} s", flush=True)
        lost, duplicated = batches.finish(timeout=900)
    finally:
        stack.stop()
    restarts = stack.stack.restarts()
    lines = [
        f"{args.rounds} rounds of each kind, {STREAMS} streams x {MAX_TOKENS} tokens per round, "
        f"{len(batches.ids)} batches x {args.batch_items} items running throughout; "
        f"{round(time.time() - started)} s; restarts by the supervisor: {restarts}",
        "",
        "| fault | rounds | streams | complete | ended retryable | failed | hung "
        "| back to SERVING p50 / max (s) |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {k} | {counts[k]['rounds']} | {counts[k]['streams']} | {counts[k]['complete']} | "
            f"{counts[k]['retryable']} | {counts[k]['failed']} | {counts[k]['hung']} | "
            f"{sorted(recovery[k])[len(recovery[k]) // 2]:.1f} / {max(recovery[k]):.1f} |"
            for k in kinds
            if recovery[k]
        ),
        "",
        f"batch items: {batches.total_items()} submitted, {lost} lost, {duplicated} duplicated",
    ]
    table = "\n".join(lines)
    summary = {
        "counts": {k: dict(v) for k, v in counts.items()}, "recovery_s": recovery, "restarts": restarts,
        "batches": len(batches.ids), "lost": lost, "duplicated": duplicated, "problems": bad[:50],
        "machine": machine_info(torch.device("cpu")), "git": git_state(), "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    out = REPO / "bench" / "results"
    (out / "chaos.md").write_text(f"Machine: {summary['machine']['cpu']}, {summary['date']}\n\n{table}\n")
    report("chaos", False, summary, table, False)
    for line in bad[:20]:
        print("problem:", line)
    ok = not bad and lost == 0 and duplicated == 0 and stack.gave_up is None
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
