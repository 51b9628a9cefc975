"""Batch-jobs benchmark: interactive latency while a batch runs, and batch vs interactive throughput.

One `bailing gateway` + one `bailing worker` subprocess (bench/service.py's `Service`: the engine
benchmark's 131.9M-param checkpoint with the demo tokenizer, an embedded Valkey) serve three phases:
(1) idle: `probes` interactive streams one after another -> median time to first token;
(2) the same probes while a batch of `items` requests runs (submitted with CreateBatch just
    before) -> median TTFT under batch load, and the batch's items/s and generated tokens/s from
    creation to completion;
(3) the same items sent as concurrent interactive streams (at most `concurrency` in flight)
    -> items/s and tokens/s, to compare with the batch path.
Target (issue #6): the median TTFT under load within 2x of the idle value. Prompts are fresh per
phase (no prefix-cache hits). Writes bench/results/batch-cpu[-quick].json and prints a table.
Usage: python -m bench.batch [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import threading
import time
from typing import Any

from bench.checkpoints import BENCH_SPEC, ensure_bench_checkpoint
from bench.harness import REPO, git_state, log, machine_info
from bench.service import CHECKPOINT, make_prompts
from bench.service_stack import Service


@dataclasses.dataclass(frozen=True)
class Sizes:
    items: int = 500
    prompt_tokens: int = 64
    new_tokens: int = 32
    probes: int = 20
    probe_gap_s: float = 0.25
    concurrency: int = 128


# every generated token decodes to text (see bench/visible.py): the first text chunk marks the first token
VISIBLE_TEXT = ("--logits-processor", "bench.visible:make")
FULL = Sizes()
QUICK = Sizes(items=60, new_tokens=8, probes=6)


async def _probe(stub: Any, pb: Any, prompt: str, new_tokens: int) -> float:
    sampling = pb.SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    async for _ in stub.GenerateStream(pb.GenerateRequest(model="ling", prompt=prompt, sampling=sampling)):
        return time.perf_counter() - start  # the first chunk carries the first text
    raise RuntimeError("empty stream")


async def _probes(
    address: str, prompts: list[str], sizes: Sizes, stop: threading.Event | None
) -> list[float]:
    import grpc

    from gateway.api import pb, pb_grpc

    ttfts = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        for prompt in prompts:
            if stop is not None and stop.is_set():
                break
            ttfts.append(await _probe(stub, pb, prompt, sizes.new_tokens))
            await asyncio.sleep(sizes.probe_gap_s)
    return ttfts


def _batch_jsonl(prompts: list[str], new_tokens: int) -> bytes:
    lines = []
    for i, prompt in enumerate(prompts):
        sampling = {"max_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
        lines.append(json.dumps({"custom_id": f"i{i}", "body": {"prompt": prompt, "sampling": sampling}}))
    return "\n".join(lines).encode()


def run_batch_with_probes(address: str, items: list[str], probes: list[str], sizes: Sizes) -> dict[str, Any]:
    """Submit the batch, probe while it runs, wait for it; batch throughput and probe TTFTs."""
    import grpc

    from gateway.api import pb, pb_grpc

    with grpc.insecure_channel(address) as channel:
        jobs = pb_grpc.JobsStub(channel)
        start = time.perf_counter()
        batch = jobs.CreateBatch(
            pb.CreateBatchRequest(model="ling", jsonl=_batch_jsonl(items, sizes.new_tokens)), timeout=300
        )
        done = threading.Event()
        ttfts: list[float] = []
        prober = threading.Thread(
            target=lambda: ttfts.extend(asyncio.run(_probes(address, probes, sizes, done))), daemon=True
        )
        time.sleep(1.0)  # let the batch fill the worker before probing
        prober.start()
        while True:
            record = jobs.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=30)
            if record.status in (pb.COMPLETED, pb.CANCELLED, pb.EXPIRED, pb.FAILED):
                break
            time.sleep(0.2)
        wall = time.perf_counter() - start
        done.set()
        prober.join()
    return {
        "status": pb.BatchStatus.Name(record.status),
        "completed": record.counts.completed,
        "wall_s": wall,
        "items_per_s": record.counts.completed / wall,
        "tokens_per_s": record.usage.completion_tokens / wall,
        "probe_ttfts_s": ttfts,
    }


async def _interactive(address: str, prompts: list[str], sizes: Sizes) -> dict[str, float]:
    import grpc

    from gateway.api import pb, pb_grpc

    gate = asyncio.Semaphore(sizes.concurrency)
    tokens = 0

    async def one(stub: Any, prompt: str) -> None:
        nonlocal tokens
        sampling = pb.SamplingParams(max_tokens=sizes.new_tokens, temperature=0.0, ignore_eos=True)
        async with gate:
            out = await stub.Generate(pb.GenerateRequest(model="ling", prompt=prompt, sampling=sampling))
        tokens += out.usage.completion_tokens

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        start = time.perf_counter()
        await asyncio.gather(*(one(stub, p) for p in prompts))
        wall = time.perf_counter() - start
    return {"wall_s": wall, "items_per_s": len(prompts) / wall, "tokens_per_s": tokens / wall}


def run(sizes: Sizes) -> dict[str, Any]:
    from engine.tokenizer import load_tokenizer

    checkpoint = ensure_bench_checkpoint(CHECKPOINT, BENCH_SPEC, with_tokenizer=True)
    tok = load_tokenizer(checkpoint)
    service = Service(checkpoint, worker_args=VISIBLE_TEXT)
    log("starting valkey + worker + gateway")
    service.start()
    try:
        asyncio.run(_probes(service.address, make_prompts(tok, 3, sizes.prompt_tokens, 900), sizes, None))
        log("phase 1: idle probes")
        idle = asyncio.run(
            _probes(service.address, make_prompts(tok, sizes.probes, sizes.prompt_tokens, 1), sizes, None)
        )
        log("phase 2: probes while a batch runs")
        items = make_prompts(tok, sizes.items, sizes.prompt_tokens, 2)
        loaded = run_batch_with_probes(
            service.address, items, make_prompts(tok, 10 * sizes.probes, sizes.prompt_tokens, 3), sizes
        )
        log("phase 3: the same items as concurrent interactive requests")
        interactive = asyncio.run(
            _interactive(service.address, make_prompts(tok, sizes.items, sizes.prompt_tokens, 4), sizes)
        )
    finally:
        service.stop()
    idle_ms = 1000 * statistics.median(idle)
    loaded_ms = 1000 * statistics.median(loaded["probe_ttfts_s"])
    return {
        "sizes": dataclasses.asdict(sizes),
        "idle_median_ttft_ms": idle_ms,
        "loaded_median_ttft_ms": loaded_ms,
        "ttft_ratio": loaded_ms / idle_ms,
        "loaded_probes": len(loaded["probe_ttfts_s"]),
        "batch": loaded,
        "interactive": interactive,
    }


def markdown_table(r: dict[str, Any], machine: dict[str, Any]) -> str:
    s, b, i = r["sizes"], r["batch"], r["interactive"]
    head = (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}. "
        f"{s['items']} items of ~{s['prompt_tokens']} prompt tokens, {s['new_tokens']} new tokens each; "
        f"probes: single streams, {r['loaded_probes']} under load."
    )
    lines = [
        "| metric | value | target |",
        "|---|---|---|",
        f"| interactive median TTFT, idle | {r['idle_median_ttft_ms']:.1f} ms | |",
        f"| interactive median TTFT while the batch runs | {r['loaded_median_ttft_ms']:.1f} ms "
        f"({r['ttft_ratio']:.2f}x idle) | <= 2x idle |",
        f"| batch throughput | {b['items_per_s']:.2f} items/s, {b['tokens_per_s']:.0f} tok/s | |",
        f"| same items as concurrent interactive requests | {i['items_per_s']:.2f} items/s, "
        f"{i['tokens_per_s']:.0f} tok/s | |",
        f"| batch / interactive throughput | {b['items_per_s'] / i['items_per_s']:.2f}x | |",
    ]
    return head + "\n\n" + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 items, 8 new tokens, 6 probes")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout, the rest on stderr")
    args = ap.parse_args()
    result = run(QUICK if args.quick else FULL)
    import torch

    machine = machine_info(torch.device("cpu"))
    result.update(machine=machine, git=git_state())
    out = REPO / "bench" / "results" / f"batch-cpu{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result, machine)
    print(table, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result))
    log(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
