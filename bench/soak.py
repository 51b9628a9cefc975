"""`make soak`: the local stack (`bailing up`'s Stack: embedded Valkey, gateway, a demo Ling worker)
under N concurrent streaming clients for a set time.

Each client sends greedy `ignore_eos` streams back to back; every request must end OK with all its
tokens. Every 10 s it samples RSS and open file descriptors of the gateway, worker and Valkey (each
child's process tree) and the worker's KV-cache usage; after the load it waits for idle and reads KV
usage again (must be 0). Reports per-minute p50/p99 TTFT and inter-token latency, RSS growth between
minute 2 and the end (< 5% per process is the bar), fd drift, and a plot.

    python -m bench.soak [--streams 8] [--minutes 3] [--max-tokens 32]
    python -m bench.soak --streams 64 --minutes 10        # the reference run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import REPO, git_state, machine_info, report
from bench.stack_load import Outcome, SupervisedStack, group_resources, metric, percentile, stream_request

SAMPLE_EVERY_S = 10.0
PROMPT = "Write a long story about a lighthouse keeper and the sea, in plain words."


def _free_port_block(n: int) -> int:
    """A base port P with P .. P+n-1 all free now (the stack's metrics ports)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65000:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block")


async def _clients(address: str, streams: int, until: float, max_tokens: int) -> list[Outcome]:
    import grpc

    from gateway.api import pb, pb_grpc

    outcomes: list[Outcome] = []

    async def client(i: int) -> None:
        n = 0
        while time.monotonic() < until:
            outcomes.append(
                await stream_request(stub, pb, "ling", f"soak-{i}-{n}", PROMPT, max_tokens, limit_s=120.0)
            )
            n += 1

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        await asyncio.gather(*(client(i) for i in range(streams)))
    return outcomes


async def _sampler(stack: SupervisedStack, kv_port: int, t0: float, until: float, out: list[dict]) -> None:
    while True:
        row: dict = {"t_s": round(time.monotonic() - t0, 1)}
        for child in stack.stack.all_children():
            rss, fds = group_resources(child)
            row[f"{child.name}_rss_mib"], row[f"{child.name}_fds"] = round(rss, 1), fds
        try:
            row["kv_usage"] = await asyncio.to_thread(metric, kv_port, "bailing_worker_kv_cache_usage")
        except (OSError, KeyError):
            row["kv_usage"] = None
        out.append(row)
        if time.monotonic() >= until:
            return
        await asyncio.sleep(min(SAMPLE_EVERY_S, max(0.0, until - time.monotonic())))


async def _run(stack: SupervisedStack, kv_port: int, args) -> tuple[list[Outcome], list[dict], float]:
    t0 = time.monotonic()
    until = t0 + args.minutes * 60
    samples: list[dict] = []
    sampler = asyncio.create_task(_sampler(stack, kv_port, t0, until, samples))
    outcomes = await _clients(stack.address, args.streams, until, args.max_tokens)
    await sampler
    idle_kv, waited = None, 0.0
    while waited < 30.0:  # idle: the KV cache must drain to 0
        await asyncio.sleep(1.0)
        waited += 1.0
        idle_kv = await asyncio.to_thread(metric, kv_port, "bailing_worker_kv_cache_usage")
        if idle_kv == 0:
            break
    for o in outcomes:
        o.started -= t0
        o.ended -= t0
        o.first = o.first - t0 if o.first else 0.0
        o.token_times = [t - t0 for t in o.token_times]
    return outcomes, samples, idle_kv


def _minutes(outcomes: list[Outcome], minutes: float) -> list[dict]:
    rows, last = [], int(minutes + 0.999) - 1
    for m in range(last + 1):  # requests that end after the load stopped count in the last minute
        done = [o for o in outcomes if m * 60 <= o.ended and (o.ended < (m + 1) * 60 or m == last)]
        ttft = [o.ttft_s for o in done if o.ttft_s is not None]
        itl = [g for o in done for g in o.itls_s()]
        rows.append({
            "minute": m + 1, "requests": len(done), "failed": sum(not o.complete for o in done),
            "tokens": sum(o.tokens for o in done),
            "ttft_p50_ms": percentile(ttft, 0.5) * 1e3, "ttft_p99_ms": percentile(ttft, 0.99) * 1e3,
            "itl_p50_ms": percentile(itl, 0.5) * 1e3, "itl_p99_ms": percentile(itl, 0.99) * 1e3,
        })  # fmt: skip
    return rows


def _growth(samples: list[dict], key: str) -> tuple[float, float, float]:
    """(value at minute 2, value at the end, growth in %) of a sampled series."""
    after = [s for s in samples if s["t_s"] >= 120.0] or samples[len(samples) // 2 :]
    first, last = after[0][key], samples[-1][key]
    return first, last, (last - first) / first * 100 if first else 0.0


def _plot(samples: list[dict], minutes: list[dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        ax1.plot([s["t_s"] / 60 for s in samples], [s[f"{name}_rss_mib"] for s in samples], label=name)
    ax1.set_xlabel("minutes")
    ax1.set_ylabel("RSS (MiB, process tree)")
    ax1.legend()
    xs = [m["minute"] for m in minutes]
    for key in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"):
        ax2.plot(xs, [m[key] for m in minutes], marker="o", label=key)
    ax2.set_xlabel("minute")
    ax2.set_ylabel("ms")
    ax2.set_yscale("log")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=8, help="concurrent streaming clients (8)")
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the load runs (3)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (32)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="where soak.{md,png} go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # no background decode-graph compile: its one-time memory would land inside the RSS window
    os.environ.setdefault("BAILING_COMPILE", "0")
    base = _free_port_block(4)
    stack = SupervisedStack(
        Path(tempfile.mkdtemp(prefix="bailing-soak-")), ["ling"], 1, metrics_port_base=base
    )
    started = time.time()
    stack.start()
    try:
        outcomes, samples, idle_kv = asyncio.run(_run(stack, base + 1, args))
    finally:
        stack.stop()
    names = [c.name for c in stack.stack.all_children()]
    minutes = _minutes(outcomes, args.minutes)
    growth = {n: _growth(samples, f"{n}_rss_mib") for n in names}
    fds = {n: _growth(samples, f"{n}_fds") for n in names}
    failed = [o for o in outcomes if not o.complete]
    summary = {
        "streams": args.streams, "minutes": args.minutes, "max_tokens": args.max_tokens,
        "requests": len(outcomes), "failed": len(failed), "tokens": sum(o.tokens for o in outcomes),
        "failures": [f"{o.request_id}: {o.code} {o.tokens}/{o.wanted} {o.details}" for o in failed[:20]],
        "rss_growth_pct": {n: round(g[2], 2) for n, g in growth.items()},
        "fds": {n: [f[0], f[1]] for n, f in fds.items()}, "idle_kv_usage": idle_kv,
        "restarts": stack.stack.restarts(), "seconds": round(time.time() - started), "git": git_state(),
        "machine": machine_info(torch.device("cpu")), "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    _plot(samples, minutes, names, out / "soak.png")
    lines = [
        f"{args.streams} streams x {args.minutes:g} min, {args.max_tokens} tokens each; "
        f"{len(outcomes)} requests, {len(failed)} failed; KV usage when idle: {idle_kv}; "
        f"restarts: {summary['restarts'] or 'none'}",
        "",
        "| minute | requests | failed | tokens | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) "
        "| ITL p99 (ms) |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {m['minute']} | {m['requests']} | {m['failed']} | {m['tokens']} | {m['ttft_p50_ms']:.0f} | "
            f"{m['ttft_p99_ms']:.0f} | {m['itl_p50_ms']:.1f} | {m['itl_p99_ms']:.1f} |"
            for m in minutes
        ),
        "",
        "| process | RSS at minute 2 (MiB) | RSS at the end (MiB) | growth | fds at minute 2 "
        "| fds at the end |",
        "|---|---|---|---|---|---|",
        *(
            f"| {n} | {growth[n][0]:.1f} | {growth[n][1]:.1f} | {growth[n][2]:+.2f}% | {fds[n][0]} "
            f"| {fds[n][1]} |"
            for n in names
        ),
    ]
    table = "\n".join(lines)
    (out / "soak.md").write_text(f"Machine: {summary['machine']['cpu']}, {summary['date']}\n\n{table}\n")
    report("soak", False, {"summary": summary, "minutes": minutes, "samples": samples}, table, False)
    ok = not failed and idle_kv == 0 and all(g[2] < 5.0 for g in growth.values())
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
