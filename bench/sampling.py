"""Parallel sampling benchmark: one request with n samples vs n independent requests vs transformers.

Same checkpoint as bench/engine.py (`.bailing/bench/ling-bench`, fp32 on CPU). For n in 4, 8, 16: a
512-token prompt, 64 new tokens per sample, temperature 1, seeded. Ours with `n`: the prompt is
prefilled once, the other n - 1 samples fork from it (shared full blocks, one copied partial block).
Ours, n independent requests: what a client without `n` does (the same prompt n times, seeds
seed + i, submitted together: they are admitted in one step, so none reuses another's prefix).
transformers: `Glm4MoeForCausalLM.generate(num_return_sequences=n, do_sample=True)` on the same
weights (it expands the prompt n times). Reports seconds per request, generated tokens/s, prompt
tokens the engine computed, and peak KV blocks held; checks that our two ways sample the same tokens.
Writes bench/results/sampling-<device>[-quick].json and prints a markdown table.
Usage: python -m bench.sampling [--quick] [--json] [--repeats N]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.checkpoints import BENCH_ROOT, ensure_bench_checkpoint
from bench.engine_pair import Engines, load_engines, random_prompts
from bench.harness import git_state, log, machine_info, report
from engine import SamplingParams

PROMPT_TOKENS, NEW_TOKENS, SEED = 512, 64, 1234


def _run_engine(eng: Engines, prompt: list[int], params: list[SamplingParams]) -> dict[str, Any]:
    """Add the requests together, step to the end; time, outputs, prompt tokens computed, peak blocks."""
    engine = eng.ours.engine
    before = engine.metrics.prompt_tokens
    peak, outs, first = 0, {}, None
    t0 = time.perf_counter()
    with engine.holding_steps():
        ids = [engine.add_request(prompt, p) for p in params]
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                outs[out.request_id] = out
        peak = max(peak, engine.blocks.num_blocks - engine.blocks.num_free_blocks())
        if first is None and all(s.output_token_ids for s in _samples(engine, ids)):
            first = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    samples = [c.token_ids for rid in ids for c in (outs[rid].choices or [outs[rid]])]
    return {
        "s": seconds,
        "first_s": first if first is not None else seconds,
        "tokens": samples,
        "prompt_tokens": engine.metrics.prompt_tokens - before,
        "peak_blocks": peak,
    }


def _samples(engine: Any, ids: list[str]) -> list[Any]:
    """The sequences of these requests still in the engine (finished ones count as started)."""
    groups = [engine._requests.get(rid) for rid in ids]
    return [m.seq for g in groups if g is not None for m in g.members]


@torch.inference_mode()
def _run_transformers(eng: Engines, prompt: list[int], n: int) -> float:
    ids = torch.tensor([prompt], device=eng.device)  # (1, P)
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    eng.baseline.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_return_sequences=n,
        pad_token_id=eng.pad_id,
    )  # (n, P + new)
    return time.perf_counter() - t0


def _same_tokens(eng: Engines, n: int, prompt_tokens: int) -> bool:
    """Whether the n forked samples draw exactly the tokens of n requests seeded seed + i."""
    prompt = random_prompts([prompt_tokens], SEED + 7 * n, eng.config)[0]
    base = dict(max_tokens=8, temperature=1.0, ignore_eos=True)
    forked = _run_engine(eng, prompt, [SamplingParams(n=n, seed=SEED, **base)])["tokens"]
    singles = _run_engine(eng, prompt, [SamplingParams(seed=SEED + i, **base) for i in range(n)])["tokens"]
    return forked == singles


def scenario(eng: Engines, n: int, repeats: int, prompt_tokens: int) -> dict[str, Any]:
    """Median seconds of each way (fresh prompt ids per run: no prefix cache help across runs)."""
    runs: dict[str, list[Any]] = {"n": [], "independent": [], "transformers": []}
    for r in range(repeats):
        prompt = random_prompts([prompt_tokens], SEED + 100 * n + r, eng.config)[0]
        base = dict(max_tokens=NEW_TOKENS, temperature=1.0, ignore_eos=True)
        runs["n"].append(_run_engine(eng, prompt, [SamplingParams(n=n, seed=SEED, **base)]))
        prompt2 = random_prompts([prompt_tokens], SEED + 100 * n + r + 50, eng.config)[0]
        singles = [SamplingParams(seed=SEED + i, **base) for i in range(n)]
        runs["independent"].append(_run_engine(eng, prompt2, singles))
        runs["transformers"].append(_run_transformers(eng, prompt, n))
    same = _same_tokens(eng, n, prompt_tokens)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    result = {"n": n, "same_tokens": same}
    for way in ("n", "independent"):
        result[f"{way}_s"] = median([x["s"] for x in runs[way]])
        result[f"{way}_first_s"] = median([x["first_s"] for x in runs[way]])
        result[f"{way}_prompt_tokens"] = runs[way][0]["prompt_tokens"]
        result[f"{way}_peak_blocks"] = max(x["peak_blocks"] for x in runs[way])
    result["transformers_s"] = median(runs["transformers"])
    for way in ("n", "independent", "transformers"):
        result[f"{way}_tok_s"] = n * NEW_TOKENS / result[f"{way}_s"]
    return result


def markdown_table(rows: list[dict[str, Any]], machine: dict[str, Any], prompt_tokens: int) -> str:
    head = (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{machine['threads']} threads. Prompt {prompt_tokens} tokens, {NEW_TOKENS} new tokens per "
        "sample, temperature 1, block size 16."
    )
    lines = [
        "| n | way | s / request | first token of every sample, s | generated tok/s "
        "| prompt tokens computed | peak KV blocks | time vs n-way |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | ours, `n={r['n']}` (fork) | {r['n_s']:.2f} | {r['n_first_s']:.2f} "
            f"| {r['n_tok_s']:.0f} "
            f"| {r['n_prompt_tokens']} | {r['n_peak_blocks']} | 1.00x |"
        )
        lines.append(
            f"| {r['n']} | ours, {r['n']} independent requests | {r['independent_s']:.2f} "
            f"| {r['independent_first_s']:.2f} "
            f"| {r['independent_tok_s']:.0f} | {r['independent_prompt_tokens']} "
            f"| {r['independent_peak_blocks']} | {r['independent_s'] / r['n_s']:.2f}x |"
        )
        lines.append(
            f"| {r['n']} | transformers `num_return_sequences` | {r['transformers_s']:.2f} | "
            f"| {r['transformers_tok_s']:.0f} | {r['n'] * prompt_tokens} | | "
            f"{r['transformers_s'] / r['n_s']:.2f}x |"
        )
    return head + "\n\n" + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n = 4 and 8, a 128-token prompt, 1 run")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout, the rest on stderr")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per way (default 3, quick 1)")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    prompt_tokens = 128 if args.quick else PROMPT_TOKENS
    ns = (4, 8) if args.quick else (4, 8, 16)
    folder = ensure_bench_checkpoint(BENCH_ROOT / "ling-bench")
    eng = load_engines(folder, "cpu")
    _run_engine(eng, random_prompts([32], 1, eng.config)[0], [SamplingParams(n=2, max_tokens=4)])  # warm
    _run_transformers(eng, random_prompts([32], 1, eng.config)[0], 2)
    rows = []
    for n in ns:
        log(f"n = {n}")
        rows.append(scenario(eng, n, repeats, prompt_tokens))
    machine = machine_info(eng.device)
    result = {"rows": rows, "machine": machine, "git": git_state(), "prompt_tokens": prompt_tokens}
    report("sampling-cpu", args.quick, result, markdown_table(rows, machine, prompt_tokens), args.json)


if __name__ == "__main__":
    main()
