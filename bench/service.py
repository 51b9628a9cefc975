"""Service benchmark: concurrent streams through gateway + Redis + worker, over gRPC and over the
OpenAI HTTP API (SSE), vs. an in-process engine.

The same greedy requests (text prompts, `ignore_eos`, fixed new-token count) go (a) straight to an
`LLMEngine` in this process, (b) through the whole service over gRPC: a `bailing gateway` and
`bailing worker` subprocesses on the same checkpoint, an embedded Valkey (or BAILING_REDIS_URL), and
a grpc.aio client in this process streaming every request at once, and (c) through the same service
over HTTP: POST /v1/completions streamed as server-sent events (`bench.service_http`, a connection per
request). The service runs two identical workers (MODEL and TWIN) so that (b) and (c) can send the
same prompts without prefix-cache hits: in each round one protocol goes to each, and they swap (and
take turns going first) from round to round. The in-process side adds all its requests before the
engine's next step (`LLMEngine.holding_steps`); through the service they arrive as the worker's task
threads take them. Fresh prompts every round, the same on all three sides; the ratios are paired
within a round and the medians over rounds are reported.

Reported: generated tokens/s, p50 and p99 time to first token of the burst, the same for one request
at a time, and, for every service request, the service's own share of its time to first text
(pickup + relay, from the worker's event times: `bench.service_stack.service_share`), which does not
depend on how long the engine's part took and so resolves milliseconds that the A/B difference of
two noisy TTFTs cannot. Time to first token is the time to the first text on all sides (a stream's
first chunk carries text). Checkpoint: the engine benchmark's BailingMoeV2 (`bench/engine.py`,
131.9M params) with the demo tokenizer, in `.bailing/bench/ling-bench-text`. Table: bench/service_report.py.
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
from bench.service_http import stream_all_http, stream_one_http
from bench.service_report import SIDES, markdown_table, summarize
from bench.service_stack import Service, ServiceShare, StreamTrace, service_share, stream_all, stream_one

CHECKPOINT = BENCH_ROOT / "ling-bench-text"
MODEL, TWIN = "ling", "ling-twin"  # two workers on CHECKPOINT: gRPC and HTTP run the same prompts, one each


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


# ---------------------------------------------------------------- sides (b) and (c): the service


def run_service(
    service: Service, prompts: list[str], new_tokens: int, tag: str, http: bool = False, model: str = MODEL
) -> dict[str, Any]:
    """All prompts at once through the service to `model`'s worker, over gRPC or (`http`) the OpenAI
    API; its summary plus the service's share per request."""
    cpu, client_cpu, start = service.cpu_seconds(), time.process_time(), time.time()
    if http:
        traces = asyncio.run(stream_all_http(service.http_port, prompts, new_tokens, tag, model))
    else:
        traces = asyncio.run(stream_all(service.address, prompts, new_tokens, tag, model))
    wall, client_cpu = time.time() - start, time.process_time() - client_cpu
    used = {k: v - cpu[k] for k, v in service.cpu_seconds().items()}
    summary = _summary(wall, sum(t.tokens for t in traces), [t.ttft_s for t in traces])
    worker = used.pop(f"worker-{model}")
    cpu_s = {
        "gateway_cpu_s": used.pop("gateway"),
        "worker_cpu_s": worker,
        "idle_worker_cpu_s": sum(used.values()),  # the other worker's, idle meanwhile
        "client_cpu_s": client_cpu,
    }
    return {**summary, **_shares(service, traces), **cpu_s}


def _shares(service: Service, traces: list[StreamTrace]) -> dict[str, float]:
    """Medians / p99 of the service's part of each request's time to first text (ms), read from the
    streams of `traces` (read soon: a finished stream lasts FINISHED_STREAM_TTL_S)."""
    return _share_stats(service_share(service.redis_url, traces))


def _share_stats(shares: list[ServiceShare]) -> dict[str, float]:
    added = [1000 * s.added_s for s in shares]
    return {
        "pickup_ms": 1000 * statistics.median(s.pickup_s for s in shares),
        "relay_ms": 1000 * statistics.median(s.relay_s for s in shares),
        "added_ms": statistics.median(added),
        "added_p99_ms": _percentile(added, 99),
    }


def _workers(i: int) -> tuple[str, str]:
    """(gRPC's worker, HTTP's worker) for round or single request `i`: they swap every time, and the
    one on MODEL goes first, so each protocol runs as often first as second, on each worker."""
    return (MODEL, TWIN) if i % 2 == 0 else (TWIN, MODEL)


async def _one_at_a_time(
    service: Service, prompts: list[str], new_tokens: int, tag: str
) -> tuple[list[StreamTrace], list[StreamTrace]]:
    """Each prompt alone over gRPC (one channel for all) and alone over HTTP, on different workers;
    each trace's `share` is read right after it (a finished stream lasts FINISHED_STREAM_TTL_S, 30 s,
    and on a busy machine one request has taken longer than that)."""
    import grpc

    from gateway.api import pb, pb_grpc

    over_grpc, over_http = [], []
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        for i, prompt in enumerate(prompts):
            grpc_model, http_model = _workers(i)
            grpc_call = stream_one(stub, pb, f"{tag}-{i}", prompt, new_tokens, grpc_model)
            http_call = stream_one_http(service.http_port, f"{tag}-http-{i}", prompt, new_tokens, http_model)
            turns = [(over_grpc, grpc_call), (over_http, http_call)]
            for traces, call in turns if i % 2 == 0 else reversed(turns):
                traces.append(await call)
                traces[-1].share = service_share(service.redis_url, traces[-1:])[0]
    return over_grpc, over_http


# ---------------------------------------------------------------- the benchmark


def single_request_overhead(
    engine: Any, service: Service, prompts: list[str], new_tokens: int
) -> dict[str, Any]:
    """One request at a time, the same prompts on each side (each engine sees each prompt once, so
    none gets a prefix-cache hit): the median time to first text of each side, and the service's
    share of each service request (`bench.service_stack.service_share`)."""
    ours = [run_in_process(engine, [p], new_tokens)["median_ttft_ms"] for p in prompts]
    over_grpc, over_http = asyncio.run(_one_at_a_time(service, prompts, new_tokens, f"single-{time.time()}"))
    return {
        "single_ttft_in_process_ms": statistics.median(ours),
        "single_ttft_service_ms": 1000 * statistics.median(t.ttft_s for t in over_grpc),
        "single_ttft_http_ms": 1000 * statistics.median(t.ttft_s for t in over_http),
        "single_tokens": [sum(t.tokens for t in over_grpc), sum(t.tokens for t in over_http)],
        **{f"single_{k}": v for k, v in _share_stats([t.share for t in over_grpc if t.share]).items()},
        **{f"single_http_{k}": v for k, v in _share_stats([t.share for t in over_http if t.share]).items()},
    }


def run_round(engine: Any, service: Service, sizes: Sizes, round_: int) -> dict[str, dict[str, Any]]:
    """One round on fresh prompts: in process, then gRPC and HTTP on different workers (`_workers`)."""
    prompts = make_prompts(engine.tokenizer, sizes.requests, sizes.prompt_tokens, seed=round_)
    grpc_model, http_model = _workers(round_)
    tag, new = f"round{round_}", sizes.new_tokens
    service_sides = {
        "service": lambda: run_service(service, prompts, new, tag, model=grpc_model),
        "http": lambda: run_service(service, prompts, new, f"{tag}-http", http=True, model=http_model),
    }
    order = ["in_process", *(service_sides if round_ % 2 == 0 else reversed(service_sides))]
    pair = {"in_process": lambda: run_in_process(engine, prompts, new), **service_sides}
    results = {side: pair[side]() for side in order}
    for side in order:
        rate, ttft, p99 = (results[side][k] for k in ("tokens_per_s", "median_ttft_ms", "p99_ttft_ms"))
        log(f"round {round_} {side}: {rate:.1f} tok/s, TTFT p50 {ttft:.1f} ms p99 {p99:.1f} ms")
    return {side: results[side] for side in SIDES}


def run_benchmark(sizes: Sizes, checkpoint: Path | None = None) -> dict[str, Any]:
    """All sides on `checkpoint` (default: the bench checkpoint, written on first use), in the same
    compute dtype, all eager (the compiled decode step would compile in the worker's background
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
    worker_args = ("--dtype", dtype, "--no-compile-decode")
    service = Service(checkpoint, worker_args, name=MODEL, http=True, twins=(TWIN,))
    log("starting valkey + 2 workers + gateway (gRPC + HTTP)")
    service.start()
    try:
        n, length = sizes.requests, sizes.prompt_tokens
        run_in_process(
            engine, make_prompts(engine.tokenizer, n, length, seed=999), 4
        )  # full bursts: warm pools
        for i, seed in enumerate((999, 998)):  # each protocol on each worker
            warm = make_prompts(engine.tokenizer, n, length, seed=seed)
            grpc_model, http_model = _workers(i)
            run_service(service, warm, 4, f"warm{i}", model=grpc_model)
            run_service(service, warm, 4, f"warm{i}-http", http=True, model=http_model)
        rounds = [run_round(engine, service, sizes, round_) for round_ in range(sizes.repeats)]
        singles = make_prompts(engine.tokenizer, sizes.single, length, seed=500)
        single = single_request_overhead(engine, service, singles, sizes.new_tokens)
    finally:
        service.stop()
        engine.shutdown()
    return {"dtype": dtype, **summarize(sizes, rounds, single)}


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
