"""Tensor / expert parallel: what crosses between ranks, what a split costs on this machine, and what
each rank holds for the real flagship configs.

Measured (CPU, gloo, ranks as processes on this machine) on the bench checkpoint (bench/engine.py's
`ling-bench`: 131.9M fp32 params, hidden 512, 8 layers, 32 experts top-4): for TP=1, TP=2 and
TP=2+EP, the payload of every collective per prefill token (one 256-token prompt) and per decode
token (64 greedy tokens at batch 1), the step messages rank 0 broadcasts, time to first token and
decode latency. TP=1 runs with every core; TP=N ranks share the cores out (cores // N threads each).
Computed from the real configs (shared/specs/bailing_moe_v2.md section 6): weights, KV cache per
token and all-reduce traffic per token on each GPU for the layouts a user would pick.
Usage: python -m bench.parallel [--quick] [--json]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch

from bench.checkpoints import BENCH_ROOT, ensure_bench_checkpoint
from bench.harness import log, machine_info, report
from bench.parallel_plan import plan_table
from engine.parallel.group import SINGLE, TensorGroup
from engine.parallel.launch import run_local_group

PROMPT = 256


def _prompt(vocab: int, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def measure(group: TensorGroup, folder: str, decode: int, repeats: int) -> dict[str, Any] | None:
    """Rank 0 runs the requests and reports; the others follow (engine.parallel.followers)."""
    from engine import LLM, SamplingParams
    from engine.engine import EngineConfig

    config = {"max_num_seqs": 8, "num_kv_blocks": 256, "enable_prefix_caching": False}
    if not group.is_first:
        from engine.parallel.followers import serve_as_follower

        serve_as_follower(folder, torch.device("cpu"), torch.float32, EngineConfig(**config).kv_spec, group)
        return None
    with LLM(folder, dtype=torch.float32, group=group, **config) as llm:
        vocab = llm.model.runtime.vocab_size
        first = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        longer = SamplingParams(max_tokens=1 + decode, temperature=0.0, ignore_eos=True)
        llm.generate([_prompt(vocab, PROMPT, 1)], longer)  # warm-up
        ttft, total, tokens = [], [], []
        for r in range(repeats):
            prompt = _prompt(vocab, PROMPT, 10 + r)
            group.traffic.clear()
            t0 = time.perf_counter()
            llm.generate([prompt], first)
            t1 = time.perf_counter()
            prefill = dict(group.traffic)
            group.traffic.clear()
            tokens.append(llm.generate([prompt], longer)[0].token_ids)
            t2 = time.perf_counter()
            both = dict(group.traffic)
            ttft.append(t1 - t0)
            total.append(t2 - t1)
    best_ttft = min(ttft)
    kinds = set(prefill) | set(both)
    return {
        "ttft_ms": 1e3 * best_ttft,
        "decode_ms_per_token": 1e3 * (min(total) - best_ttft) / decode,
        # bytes per token of each collective kind: the prefill run's over its prompt tokens, the
        # decode steps' (the longer run minus its prefill) over the tokens they decoded
        "prefill_bytes_per_token": {k: prefill.get(k, 0) / PROMPT for k in kinds},
        "decode_bytes_per_token": {k: (both.get(k, 0) - prefill.get(k, 0)) / decode for k in kinds},
        "tokens": tokens,
    }


def run(quick: bool, folder: str | None = None) -> dict[str, Any]:
    folder = folder or str(ensure_bench_checkpoint(BENCH_ROOT / "ling-bench"))
    decode, repeats = (16, 1) if quick else (64, 3)
    cores = os.cpu_count() or 1
    layouts = {"TP=1": (1, False), "TP=2": (2, False), "TP=2+EP": (2, True)}
    results: dict[str, Any] = {}
    for name, (size, ep) in layouts.items():
        threads = max(1, cores // size)
        log(f"{name}: {size} rank(s), {threads} thread(s) each")
        if size == 1:
            torch.set_num_threads(threads)
            r = measure(SINGLE, folder, decode, repeats)
        else:
            r = run_local_group(measure, size, folder, decode, repeats, expert_parallel=ep, threads=threads)[
                0
            ]
        results[name] = r | {"ranks": size, "threads_per_rank": threads}
    same = all(r["tokens"] == results["TP=1"]["tokens"] for r in results.values())
    return {"layouts": results, "same_tokens": same, "plan": plan_table(), "quick": quick}


def _kb(d: dict[str, float], *kinds: str) -> str:
    return f"{sum(d.get(k, 0.0) for k in kinds) / 1024:.1f}"


def markdown(result: dict[str, Any], machine: dict[str, Any]) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}; fp32, gloo; "
        "payloads are the tensors each collective sums or gathers (a ring all-reduce sends 2(N-1)/N "
        "of its payload per rank).",
        "",
        "| layout | ranks x threads | TTFT, 256-token prompt (ms) | decode (ms/token) "
        "| all-reduce / prefill token (KB) | all-reduce / decode token (KB) "
        "| logits gather / decode token, per rank (KB) | step message / decode token (KB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = result["layouts"]["TP=1"]
    for name, r in result["layouts"].items():
        p, d = r["prefill_bytes_per_token"], r["decode_bytes_per_token"]
        lines.append(
            f"| {name} | {r['ranks']} x {r['threads_per_rank']} | {r['ttft_ms']:.1f} "
            f"({r['ttft_ms'] / base['ttft_ms']:.2f}x) | {r['decode_ms_per_token']:.2f} "
            f"({r['decode_ms_per_token'] / base['decode_ms_per_token']:.2f}x) | {_kb(p, 'all_reduce')} | "
            f"{_kb(d, 'all_reduce')} | {_kb(d, 'gather')} | {_kb(d, 'broadcast')} |"
        )
    lines += [
        "",
        f"Greedy tokens identical across layouts: {result['same_tokens']}.",
        "",
        result["plan"]["markdown"],
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run per layout (smoke test)")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args()
    result = run(args.quick)
    machine = machine_info(torch.device("cpu"))
    result["machine"] = machine
    report("parallel-cpu", args.quick, result, markdown(result, machine), args.json)


if __name__ == "__main__":
    main()
