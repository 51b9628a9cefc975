"""Cost curves: how our engine's cost grows with the batch size and with the context length, against
transformers' `Glm4MoeForCausalLM.generate` on the same weights (greedy, both sides fp32 on CPU).

(a) throughput against batch size: B prompts of 64 tokens, 32 new tokens each, all at once (ours:
    one `generate` call with room for all B; the baseline: one static batch of B) -> generated tok/s,
    for B in 1, 2, 4, ... 256;
(b) batch-1 decode latency against context: after a prompt of L tokens, the mean time of the next
    N = 16 tokens -> ms/token (ours: the engine's inter-token latencies; the baseline: its forward
    over one cached token at a time), for L in 256, 512, ... 16384 (the baseline runs SDPA here, so
    the curve compares decode steps, not its eager attention's L x L score matrix).
Checkpoint: the bench model of `bench.engine` with 16,448 positions (`.bailing/bench/ling-bench-16k`).
Writes bench/results/curves-<device>[-quick].json and .png (matplotlib) and prints a markdown table.
Usage: python -m bench.curves [--quick] [--ours-dtype bfloat16] [--max-batch N] [--max-context N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.checkpoints import BENCH_ROOT, BENCH_SPEC, ensure_bench_checkpoint
from bench.engine_pair import Engines, check_same, load_engines, random_prompts, run_baseline, run_ours, timed
from bench.harness import REPO, log, machine_info
from engine import SamplingParams

CONTEXT_SPEC = dataclasses.replace(BENCH_SPEC, max_position_embeddings=16384 + 64)


@dataclasses.dataclass(frozen=True)
class CurveSizes:
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    batch_prompt: int = 64
    batch_new: int = 32
    contexts: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384)
    decode_tokens: int = 16
    check_tokens: int = 4


FULL = CurveSizes()
QUICK = CurveSizes(batches=(1, 4, 16), batch_new=8, contexts=(256, 1024), decode_tokens=8)


def batch_point(eng: Engines, b: int, sizes: CurveSizes) -> dict[str, Any]:
    prompts = random_prompts([sizes.batch_prompt] * b, 7000 + b, eng.config)
    new = [sizes.batch_new] * b
    t_ours, ours = timed(eng, run_ours, prompts, new)
    t_base, base = timed(eng, run_baseline, prompts, new, b)
    tokens = b * sizes.batch_new
    return {
        "batch": b,
        "ours_tok_s": tokens / t_ours,
        "baseline_tok_s": tokens / t_base,
        "mismatches": check_same(f"batch {b}", ours, base, sizes.check_tokens),
    }


def context_point(eng: Engines, length: int, sizes: CurveSizes) -> dict[str, Any]:
    """Batch-1 decode at a context of `length`: ours from the engine's own per-token timings, the
    baseline from timing its forward one cached token at a time after the prefill (subtracting two
    whole runs would drown a few decode steps in the prefill's noise at long contexts)."""
    n = sizes.decode_tokens
    prompt = random_prompts([length], 9000 + length, eng.config)[0]
    params = SamplingParams(max_tokens=1 + n, temperature=0.0, ignore_eos=True)
    out = eng.ours.generate([prompt], params)[0]
    point: dict[str, Any] = {
        "context": length,
        "ours_ttft_ms": 1e3 * out.metrics.time_to_first_token_s,
        "ours_ms_per_token": 1e3 * statistics.mean(out.metrics.inter_token_latencies_s),
    }
    base, point["baseline_ttft_ms"], point["baseline_ms_per_token"] = _baseline_decode(eng, prompt, n)
    point["mismatches"] = check_same(f"context {length}", [out.token_ids], [base], sizes.check_tokens)
    return point


@torch.inference_mode()
def _baseline_decode(eng: Engines, prompt: list[int], n: int) -> tuple[list[int], float, float]:
    """Greedy tokens, prefill ms and mean ms per decode step of the baseline's cached forward."""
    model, dev = eng.baseline, eng.device
    t0 = time.perf_counter()
    out = model(torch.tensor([prompt], device=dev), use_cache=True)
    token = out.logits[0, -1].argmax()
    t1 = time.perf_counter()
    tokens = [int(token)]
    for _ in range(n):
        out = model(token.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
        token = out.logits[0, -1].argmax()
        tokens.append(int(token))
    return tokens, 1e3 * (t1 - t0), 1e3 * (time.perf_counter() - t1) / n


def run_curves(eng: Engines, sizes: CurveSizes) -> dict[str, Any]:
    """Both curves on loaded engines (one warm-up each first)."""
    run_ours(eng, random_prompts([16, 8], 999, eng.config), [4, 4])
    run_baseline(eng, random_prompts([16, 8], 999, eng.config), [4, 4], 2)
    batch, context = [], []
    for b in sizes.batches:
        batch.append(batch_point(eng, b, sizes))
        log(
            f"batch {b}: ours {batch[-1]['ours_tok_s']:.1f} tok/s, baseline {batch[-1]['baseline_tok_s']:.1f}"
        )
    for length in sizes.contexts:
        context.append(context_point(eng, length, sizes))
        c = context[-1]
        ours_ms, base_ms = c["ours_ms_per_token"], c["baseline_ms_per_token"]
        log(f"context {length}: ours {ours_ms:.2f} ms/token, baseline {base_ms:.2f}")
    return {"batch": batch, "context": context, "sizes": dataclasses.asdict(sizes)}


def _table(caption: str, header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown_tables(r: dict[str, Any]) -> str:
    s = r["sizes"]
    batch = _table(
        f"Throughput against batch size ({s['batch_prompt']}-token prompts, {s['batch_new']} new each):",
        ["batch", "ours tok/s", "baseline tok/s", "ratio"],
        [
            [str(p["batch"]), f"{p['ours_tok_s']:.1f}", f"{p['baseline_tok_s']:.1f}",
             f"{p['ours_tok_s'] / p['baseline_tok_s']:.2f}x"]
            for p in r["batch"]
        ],
    )  # fmt: skip
    context = _table(
        f"Batch-1 decode against context length ({s['decode_tokens']} tokens decoded after the prompt):",
        ["context", "ours ms/token", "baseline ms/token", "ratio", "ours TTFT ms", "baseline TTFT ms"],
        [
            [str(p["context"]), f"{p['ours_ms_per_token']:.2f}", f"{p['baseline_ms_per_token']:.2f}",
             f"{p['baseline_ms_per_token'] / p['ours_ms_per_token']:.2f}x",
             f"{p['ours_ttft_ms']:.0f}", f"{p['baseline_ttft_ms']:.0f}"]
            for p in r["context"]
        ],
    )  # fmt: skip
    return "\n".join([*batch, "", *context])


def plot(r: dict[str, Any], title: str, out: Path) -> Path:
    """Two log-log panels: tok/s against batch size, ms/token against context length."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        (left, "batch", "tok_s", "batch size (requests at once)", "generated tokens / s"),
        (right, "context", "ms_per_token", "context length (tokens)", "batch-1 decode ms / token"),
    )
    titles = ("throughput against batch size", "decode latency against context")
    for (ax, curve, metric, xlabel, ylabel), name in zip(panels, titles, strict=True):
        xs = [p[curve] for p in r[curve]]
        for side, style in (("ours", "o-"), ("baseline", "s--")):
            ax.plot(xs, [p[f"{side}_{metric}"] for p in r[curve]], style, label=side)
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batches 1/4/16, contexts 256/1024 (a few minutes)")
    ap.add_argument(
        "--ours-dtype", choices=["float32", "bfloat16", "auto"], help="our dtype (default float32)"
    )
    ap.add_argument("--max-batch", type=int, help="stop the batch curve here")
    ap.add_argument("--max-context", type=int, help="stop the context curve here")
    ap.add_argument("--threads", type=int, help="torch intra-op threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes, t0 = QUICK if args.quick else FULL, time.perf_counter()
    sizes = dataclasses.replace(
        sizes,
        batches=tuple(b for b in sizes.batches if b <= (args.max_batch or b)),
        contexts=tuple(c for c in sizes.contexts if c <= (args.max_context or c)),
    )
    folder = ensure_bench_checkpoint(BENCH_ROOT / "ling-bench-16k", CONTEXT_SPEC)
    engine_config = {"max_num_seqs": max(sizes.batches), "max_num_batched_tokens": 4096}
    eng = load_engines(folder, "cpu", args.ours_dtype, engine_config=engine_config)
    eng.baseline.set_attn_implementation("sdpa")
    result = run_curves(eng, sizes)
    machine = machine_info(torch.device("cpu"))
    dtype = str(eng.ours.engine.dtype).removeprefix("torch.")
    result.update(machine=machine, ours_dtype=dtype, total_s=time.perf_counter() - t0)
    name = f"curves-cpu{'' if dtype == 'float32' else '-' + dtype}{'-quick' * args.quick}"
    out = REPO / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    title = f"{machine['cpu']}, {machine['threads']} threads, ours {dtype}, baseline float32 (transformers)"
    png = plot(result, title, out.with_suffix(".png"))
    print(f"Machine: {title}.\n\n" + markdown_tables(result))
    log(f"wrote {out.relative_to(REPO)} and {png.relative_to(REPO)} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
