"""Service benchmark: concurrent streams through gateway + Redis + worker vs. an in-process engine.

The same greedy requests (text prompts, `ignore_eos`, fixed new-token count) go (a) straight to an
`LLMEngine` in this process and (b) through the whole service: a `bailing gateway` and a `bailing
worker` subprocess on the same checkpoint, an embedded Valkey (or BAILING_REDIS_URL), and a grpc.aio
client in this process streaming every request at once. The in-process side adds all its requests
before the engine's next step (`LLMEngine.holding_steps`); through the service they arrive as the
worker's task threads take them. Both sides alternate, fresh prompts per round (so no prefix-cache
hits); the ratios are paired within a round and the medians over rounds are reported.

Reported: generated tokens/s, p50 and p99 time to first token of the burst, the same for one request
at a time, and, for every service request, the service's own share of its time to first text
(pickup + relay, from the worker's event times: `bench.service_stack.service_share`), which does not
depend on how long the engine's part took and so resolves milliseconds that the A/B difference of
two noisy TTFTs cannot. Time to first token is the time to the first text on both sides (a stream's
first chunk carries text). Checkpoint: the engine benchmark's BailingMoeV2 (`bench/engine.py`,
131.9M params) with the demo tokenizer, in `.bailing/bench/ling-bench-text`.
Usage: python -m bench.service [--quick] [--json] [--requests N] [--new-tokens N] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import queue
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.checkpoints import BENCH_ROOT, BENCH_SPEC, ensure_bench_checkpoint
from bench.harness import git_state, log, machine_info, report
from bench.service_stack import Service, StreamTrace, service_share, stream_all, stream_each

CHECKPOINT = BENCH_ROOT / "ling-bench-text"


@dataclasses.dataclass(frozen=True)
class Sizes:
    requests: int = 64
    prompt_tokens: int = 128
    new_tokens: int = 64
    repeats: int = 5  # rounds; each runs both sides on the same fresh prompts; medians reported
    single: int = 8  # sequential single requests for the idle added-latency row


FULL = Sizes()
QUICK = Sizes(requests=16, new_tokens=16, repeats=1, single=6)


# ---------------------------------------------------------------- prompts


def make_prompts(tokenizer: Any, n: int, tokens: int, seed: int) -> list[str]:
    """`n` prompts of about `tokens` tokens: random word sequences drawn from the demo corpus."""
    from bailing.demo.tokenizer import read_package_text

    words = read_package_text("corpus.txt").split()
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        text = " ".join(rng.choice(words) for _ in range(tokens))
        ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
        prompts.append(tokenizer.decode(ids))
    return prompts


# ---------------------------------------------------------------- side (a): in-process engine


def run_in_process(engine: Any, prompts: list[str], new_tokens: int) -> dict[str, Any]:
    from engine.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    outputs: queue.SimpleQueue = queue.SimpleQueue()
    start = time.perf_counter()
    with engine.holding_steps():  # the engine's best case: every request enters the next step
        for i, prompt in enumerate(prompts):
            engine.add_request(prompt, params, request_id=f"b{start}-{i}", output_queue=outputs)
    first: dict[str, float] = {}
    tokens, done = 0, 0
    while done < len(prompts):
        batch = [outputs.get()]  # then drain what is there: one wake-up per engine step, not per output
        while True:
            try:
                batch.append(outputs.get_nowait())
            except queue.Empty:
                break
        now = time.perf_counter()
        for out in batch:
            if (out.new_text or out.finished) and out.request_id not in first:  # a stream's first chunk
                first[out.request_id] = now - start
            if out.finished:
                done += 1
                tokens += len(out.token_ids)
    return _summary(time.perf_counter() - start, tokens, list(first.values()))


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _summary(wall: float, tokens: int, ttfts: list[float]) -> dict[str, Any]:
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "median_ttft_ms": 1000 * statistics.median(ttfts),
        "p99_ttft_ms": 1000 * _percentile(ttfts, 99),
    }


# ---------------------------------------------------------------- side (b): the service


def run_service(service: Service, prompts: list[str], new_tokens: int, tag: str) -> dict[str, Any]:
    """All prompts at once through the service; its summary plus the service's share per request."""
    start = time.time()
    traces = asyncio.run(stream_all(service.address, prompts, new_tokens, tag))
    wall = time.time() - start
    summary = _summary(wall, sum(t.tokens for t in traces), [t.ttft_s for t in traces])
    return {**summary, **_shares(service, traces)}


def _shares(service: Service, traces: list[StreamTrace]) -> dict[str, float]:
    """Medians / p99 of the service's part of each request's time to first text (ms)."""
    shares = service_share(service.redis_url, traces)
    added = [1000 * s.added_s for s in shares]
    return {
        "pickup_ms": 1000 * statistics.median(s.pickup_s for s in shares),
        "relay_ms": 1000 * statistics.median(s.relay_s for s in shares),
        "added_ms": statistics.median(added),
        "added_p99_ms": _percentile(added, 99),
    }


# ---------------------------------------------------------------- the benchmark


def single_request_overhead(
    engine: Any, service: Service, prompts: list[str], new_tokens: int
) -> dict[str, Any]:
    """One request at a time, the same prompts on each side (each engine sees each prompt once, so
    neither gets a prefix-cache hit): the median time to first text of each side, and the service's
    share of each service request (`bench.service_stack.service_share`)."""
    ours = [run_in_process(engine, [p], new_tokens)["median_ttft_ms"] for p in prompts]
    traces = asyncio.run(stream_each(service.address, prompts, new_tokens, f"single-{time.time()}"))
    shares = _shares(service, traces)
    return {
        "single_ttft_in_process_ms": statistics.median(ours),
        "single_ttft_service_ms": 1000 * statistics.median(t.ttft_s for t in traces),
        **{f"single_{k}": v for k, v in shares.items()},
    }


def run_benchmark(sizes: Sizes, checkpoint: Path | None = None) -> dict[str, Any]:
    """Both sides on `checkpoint` (default: the bench checkpoint, written on first use), in the same
    compute dtype, both eager (the compiled decode step would compile in the worker's background
    while the bursts run; it does not touch the prefill that time to first token is)."""
    import torch

    from engine.engine import LLMEngine
    from engine.engine_config import EngineConfig
    from engine.model_loader import resolve_dtype

    checkpoint = checkpoint or ensure_bench_checkpoint(CHECKPOINT, BENCH_SPEC, with_tokenizer=True)
    dtype = str(resolve_dtype(None, torch.device("cpu"))).removeprefix("torch.")
    log(f"loading the in-process engine from {checkpoint} ({dtype})")
    engine = LLMEngine(checkpoint, dtype=dtype, config=EngineConfig(compile_decode=False))
    engine.start()
    service = Service(checkpoint, worker_args=("--dtype", dtype, "--no-compile-decode"))
    log("starting valkey + worker + gateway")
    service.start()
    try:
        n = sizes.requests
        warm = make_prompts(engine.tokenizer, n, sizes.prompt_tokens, seed=999)  # a full burst: warm pools
        run_in_process(engine, warm, 4)
        run_service(service, warm, 4, "warm")
        rounds: list[dict[str, dict[str, Any]]] = []
        for round_ in range(sizes.repeats):
            prompts = make_prompts(engine.tokenizer, n, sizes.prompt_tokens, seed=round_)
            pair = {
                "in_process": run_in_process(engine, prompts, sizes.new_tokens),
                "service": run_service(service, prompts, sizes.new_tokens, f"round{round_}"),
            }
            for side, r in pair.items():
                rate, ttft, p99 = r["tokens_per_s"], r["median_ttft_ms"], r["p99_ttft_ms"]
                log(f"round {round_} {side}: {rate:.1f} tok/s, TTFT p50 {ttft:.1f} ms p99 {p99:.1f} ms")
            rounds.append(pair)
        singles = make_prompts(engine.tokenizer, sizes.single, sizes.prompt_tokens, seed=500)
        single = single_request_overhead(engine, service, singles, sizes.new_tokens)
    finally:
        service.stop()
        engine.shutdown()
    return {"dtype": dtype, **_report(sizes, rounds, single)}


def _report(sizes: Sizes, rounds: list[dict[str, dict[str, Any]]], single: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds; the ratios and the added TTFT are paired within each round."""

    def median_of(side: str) -> dict[str, float]:
        return {k: statistics.median(r[side][k] for r in rounds) for k in rounds[0][side]}

    def paired(key: str) -> list[float]:
        return [r["service"][key] / r["in_process"][key] for r in rounds]

    added = [r["service"]["median_ttft_ms"] - r["in_process"]["median_ttft_ms"] for r in rounds]
    return {
        "sizes": dataclasses.asdict(sizes),
        "rounds": rounds,
        "in_process": median_of("in_process"),
        "service": median_of("service"),
        "throughput_ratio": statistics.median(paired("tokens_per_s")),
        "throughput_ratio_per_round": paired("tokens_per_s"),
        "ttft_ratio": statistics.median(paired("median_ttft_ms")),
        "ttft_ratio_per_round": paired("median_ttft_ms"),
        "p99_ttft_ratio": statistics.median(paired("p99_ttft_ms")),
        "added_median_ttft_ms": statistics.median(added),
        "added_median_ttft_ms_per_round": added,
        **single,
        "added_single_ttft_ms": single["single_ttft_service_ms"] - single["single_ttft_in_process_ms"],
    }


def _per_round(r: dict[str, Any]) -> str:
    pairs = zip(r["throughput_ratio_per_round"], r["ttft_ratio_per_round"], strict=True)
    return ", ".join(f"{rate:.2f}x / {ttft:.2f}x" for rate, ttft in pairs)


def markdown_table(r: dict[str, Any], machine: dict[str, Any]) -> str:
    s, o, v = r["sizes"], r["in_process"], r["service"]
    head = f"{s['requests']} concurrent streams x {s['new_tokens']} new tokens"
    head += f" ({s['prompt_tokens']}-token prompts), {r['dtype']}, {s['repeats']} rounds"
    rows = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}. {head}.",
        "",
        "| metric | service (gateway + Redis + worker) | in-process engine | result | target |",
        "|---|---|---|---|---|",
        f"| generated tok/s | {v['tokens_per_s']:.1f} | {o['tokens_per_s']:.1f} | "
        f"**{r['throughput_ratio']:.2f}x** | >= 0.85x |",
        f"| p50 TTFT, concurrent (ms) | {v['median_ttft_ms']:.1f} | {o['median_ttft_ms']:.1f} | "
        f"**{r['ttft_ratio']:.2f}x** ({r['added_median_ttft_ms']:+.0f} ms) | <= 1.15x |",
        f"| p99 TTFT, concurrent (ms) | {v['p99_ttft_ms']:.1f} | {o['p99_ttft_ms']:.1f} | "
        f"{r['p99_ttft_ratio']:.2f}x | |",
        f"| per round: throughput / p50 TTFT ratio | {_per_round(r)} | | | |",
        f"| service's share of a request's TTFT, concurrent: pickup + relay, p50 / p99 (ms) | "
        f"{v['pickup_ms']:.1f} + {v['relay_ms']:.1f} = {v['added_ms']:.1f} / {v['added_p99_ms']:.1f} | | | |",
        f"| TTFT, one request alone (ms) | {r['single_ttft_service_ms']:.1f} | "
        f"{r['single_ttft_in_process_ms']:.1f} | {r['added_single_ttft_ms']:+.1f} ms (paired medians) | |",
        f"| service's share, one request alone: pickup + relay, p50 / p99 (ms) | "
        f"{r['single_pickup_ms']:.1f} + {r['single_relay_ms']:.1f} = **{r['single_added_ms']:.1f}** / "
        f"{r['single_added_p99_ms']:.1f} | | | <= 15 ms |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 streams x 16 tokens, one round")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    overrides = {"requests": args.requests, "new_tokens": args.new_tokens, "repeats": args.repeats}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"note: load average {load:.2f} at start; timings on a busy 2-core machine are unreliable")
    started = time.time()
    result = run_benchmark(sizes)
    import torch

    machine = machine_info(torch.device("cpu"))
    result.update(machine=machine, git=git_state(), seconds=round(time.time() - started, 1))
    report("service-cpu", args.quick, result, markdown_table(result, machine), args.json)


if __name__ == "__main__":
    main()
