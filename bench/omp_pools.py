"""Why the engine builds its model on a passing thread (engine/passing_thread.py), measured.

Two side-by-side measurements, each in fresh subprocesses so no OpenMP pool leaks between them:
- ops: a small elementwise op, a 128x512 -> 2816 `F.linear` and a small causal SDPA, timed on a
  worker thread, (a) with no other thread having run parallel torch ops, (b) after the main thread
  ran one matmul (and so keeps an OpenMP pool of its own);
- engine: the bench model's time to first token for one 128-token prompt on the engine's own loop
  thread (`LLMEngine.start()`), (a) as the engine builds itself now, (b) with the model loaded and
  the KV cache allocated on the constructing thread, as before.
Usage: python -m bench.omp_pools [--json]   (make bench-omp-pools)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.harness import REPO, log, machine_info, report

_OPS = """
import json, sys, threading, time, torch
from torch.nn import functional as F
dt = getattr(torch, sys.argv[1])
def timed(fn, n=200):
    for _ in range(20): fn()
    t = time.perf_counter()
    for _ in range(n): fn()
    return 1000 * (time.perf_counter() - t) / n
def run(out):
    x, w = torch.randn(128, 512, dtype=dt), torch.randn(2816, 512, dtype=dt)
    a = torch.randn(1, 8, 128, 64, dtype=dt)
    out["elementwise_ms"] = timed(lambda: (x.float() * 2).softmax(-1))
    out["linear_ms"] = timed(lambda: F.linear(x, w))
    out["sdpa_ms"] = timed(lambda: F.scaled_dot_product_attention(a, a, a, is_causal=True))
if sys.argv[2] == "other-pool":
    torch.randn(1024, 1024) @ torch.randn(1024, 1024)
out = {}
t = threading.Thread(target=run, args=(out,)); t.start(); t.join()
print(json.dumps(out))
"""

_ENGINE = """
import json, queue, random, sys, time
import engine.engine as engine_module
from engine.engine import EngineConfig, LLMEngine
from engine.sampling_params import SamplingParams
if sys.argv[2] == "caller-thread":  # how the engine built itself before: on the constructing thread
    engine_module.in_passing_thread = lambda fn, *args, **kwargs: fn(*args, **kwargs)
engine = LLMEngine(sys.argv[3], dtype=sys.argv[1], config=EngineConfig(compile_decode=False))
engine.start()
vocab = min(engine.model.runtime.vocab_size, 20000)
params, rng, ttfts = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True), random.Random(0), []
for i in range(12):
    outs = queue.SimpleQueue()
    engine.add_request([rng.randrange(1, vocab) for _ in range(128)], params, output_queue=outs)
    ttfts.append(1000 * outs.get().metrics.time_to_first_token_s)
engine.shutdown()
print(json.dumps({"ttft_ms": sorted(ttfts[2:])[len(ttfts[2:]) // 2]}))  # median after two warm-ups
"""


def _child(code: str, *args: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_benchmark(dtypes: tuple[str, ...], rounds: int = 3) -> dict[str, Any]:
    """Medians over `rounds`, the two cases of each pair alternating within a round."""
    from bench.checkpoints import BENCH_SPEC, ensure_bench_checkpoint
    from bench.service import CHECKPOINT

    checkpoint = str(ensure_bench_checkpoint(CHECKPOINT, BENCH_SPEC, with_tokenizer=True))
    result: dict[str, Any] = {"ops": {}, "engine": {}}
    for dtype in dtypes:
        ops: dict[str, list[dict[str, float]]] = {"alone": [], "other-pool": []}
        ttft: dict[str, list[float]] = {"passing-thread": [], "caller-thread": []}
        for _ in range(rounds):
            for case, runs in ops.items():
                runs.append(_child(_OPS, dtype, case))
            for case, times in ttft.items():
                times.append(_child(_ENGINE, dtype, case, checkpoint)["ttft_ms"])
        for case, runs in ops.items():
            result["ops"][f"{dtype}/{case}"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for case, times in ttft.items():
            result["engine"][f"{dtype}/{case}"] = statistics.median(times)
        log(f"{dtype}: ops {result['ops']}, engine TTFT {result['engine']}")
    return result


def markdown_table(r: dict[str, Any], machine: dict[str, Any]) -> str:
    rows = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{machine['threads']} threads.",
        "",
        "| dtype | measured on a worker thread | no other pool | another thread keeps a pool | ratio |",
        "|---|---|---|---|---|",
    ]
    for key in sorted({k.split("/")[0] for k in r["ops"]}):
        alone, other = r["ops"][f"{key}/alone"], r["ops"][f"{key}/other-pool"]
        for op, label in (
            ("elementwise_ms", "softmax of 128x512 (ms)"),
            ("linear_ms", "F.linear 128x512 -> 2816 (ms)"),
            ("sdpa_ms", "causal SDPA 8x128x64 (ms)"),
        ):
            rows.append(
                f"| {key} | {label} | {alone[op]:.3f} | {other[op]:.3f} | {other[op] / alone[op]:.2f}x |"
            )
        passing, caller = r["engine"][f"{key}/passing-thread"], r["engine"][f"{key}/caller-thread"]
        rows.append(
            f"| {key} | engine loop: TTFT, 128-token prompt (ms) | {passing:.1f} (built on a "
            f"passing thread) | {caller:.1f} (built on the caller's thread) | {caller / passing:.2f}x |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    started = time.time()
    result = run_benchmark(("bfloat16", "float32"), args.rounds)
    machine = machine_info(torch.device("cpu"))
    result.update(machine=machine, seconds=round(time.time() - started, 1))
    report("omp-pools-cpu", False, result, markdown_table(result, machine), args.json)


if __name__ == "__main__":
    main()
