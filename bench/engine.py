"""Engine benchmark: our `engine.LLM` vs transformers' `Glm4MoeForCausalLM.generate`, same weights, greedy.

Checkpoint (`.bailing/bench/ling-bench`, written once by the demo writer; random fp32 weights, 131.9M
params, 0.53 GB): BailingMoeV2 with vocab 32768, hidden 512, 8 layers (layer 0 dense with intermediate
1408; layers 1-7 MoE: 32 experts of width 256, top-4 within the best 2 of 4 groups, 1 shared expert),
8 query / 2 KV heads of dim 64, max positions 4096. `--real-config ling-mini` (GPU only) writes
Ling-mini-2.0's shapes instead (16.26B params, random bf16 drawn on the GPU, 33 GB) to
`.bailing/bench/ling-mini`. Options: --threads N, --repeats N (timed runs per side, default 2).
Scenarios use seeded token-id prompts; both engines run in this process, alternating, one warm-up each:
(a) offline: 64 prompts of 32-256 tokens, 128 new tokens each -> generated tokens/s;
(b) batch 1: time to first token at a 256-token prompt; decode latency (t(1 + N) - t(1)) / N, N = 64;
(c) mixed: 64 prompts, max_tokens uniform in 8-256 -> useful tokens/s;
plus how far batch-1 decode is from the memory-bandwidth floor (active weight bytes / copy bandwidth).
The baseline runs left-padded static batches in input order at its best batch size; a batch runs
until its longest request. Prints a markdown table and writes bench/results/engine-<device>[-quick].json.
Usage: python -m bench.engine [--quick] [--json] [--device cuda] [--real-config ling-mini]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from functools import partial
from typing import Any

import torch

from bench.checkpoints import BENCH_ROOT, REAL_SPECS, ensure_bench_checkpoint, ensure_real_checkpoint
from bench.engine_pair import (
    Engines,
    check_same,
    load_engines,
    random_lengths,
    random_prompts,
    run_baseline,
    run_ours,
    sync,
    timed,
    warm_up,
)
from bench.harness import REPO, git_state, log, machine_info


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Request counts and lengths of one benchmark run."""

    prompts: int = 64
    prompt_len: tuple[int, int] = (32, 256)
    new_tokens: int = 128
    mixed_max_tokens: tuple[int, int] = (8, 256)
    ttft_prompt: int = 256
    decode_tokens: int = 64
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    search_new_tokens: int = 16  # the baseline's batch-size search runs every request this long
    repeats: int = 2  # timed runs per engine and scenario (alternating); the best counts
    check_tokens: int = 8  # greedy tokens that must agree between the engines


FULL = Sizes()
QUICK = Sizes(prompts=16, new_tokens=32, mixed_max_tokens=(8, 64), decode_tokens=16, batch_sizes=(8, 16))


# ---------------------------------------------------------------- scenarios


def best_batch_size(
    eng: Engines, prompts: list[list[int]], max_tokens: list[int], sizes: Sizes
) -> tuple[int, dict[int, float]]:
    """The baseline's fastest batch size (useful tokens/s) over `sizes.batch_sizes`, requests capped
    at `sizes.search_new_tokens` new tokens (relative lengths kept) so the search stays short."""
    scale = min(1.0, sizes.search_new_tokens / max(max_tokens))
    capped = [max(1, round(n * scale)) for n in max_tokens]
    rates = {}
    for bs in sizes.batch_sizes:
        seconds, _ = timed(eng, run_baseline, prompts, capped, bs)
        rates[bs] = sum(capped) / seconds
        log(f"  baseline batch size {bs}: {rates[bs]:.1f} useful tok/s")
    return max(rates, key=rates.get), rates


def throughput_scenario(
    eng: Engines, name: str, lengths: list[int], max_tokens: list[int], sizes: Sizes, seed: int
) -> dict[str, Any]:
    """Useful (requested) tokens/s of both engines on the same requests; best of `sizes.repeats`."""
    warm_up(eng)
    bs, search = best_batch_size(eng, random_prompts(lengths, seed, eng.config), max_tokens, sizes)
    ours_s, base_s, bad, same = [], [], 0, 0
    for r in range(1, sizes.repeats + 1):
        prompts = random_prompts(lengths, seed + r, eng.config)
        t, ours = timed(eng, run_ours, prompts, max_tokens)
        ours_s.append(t)
        t, base = timed(eng, run_baseline, prompts, max_tokens, bs)
        base_s.append(t)
        log(f"  {name}: ours {ours_s[-1]:.2f} s, baseline {base_s[-1]:.2f} s")
        bad += check_same(name, ours, base, sizes.check_tokens)
        same += sum(o == b for o, b in zip(ours, base, strict=True))
    useful = sum(max_tokens)
    ours_rate, base_rate = useful / min(ours_s), useful / min(base_s)
    return {
        f"{name}_ours_tok_s": ours_rate,
        f"{name}_baseline_tok_s": base_rate,
        f"{name}_throughput_ratio": ours_rate / base_rate,
        f"{name}_baseline_batch_size": bs,
        f"{name}_batch_size_search_tok_s": search,
        f"{name}_useful_tokens": useful,
        f"{name}_ours_s": ours_s,
        f"{name}_baseline_s": base_s,
        f"{name}_mismatches": bad,
        f"{name}_identical_requests": same,  # whole completions equal, over all repeats
    }


def offline_scenario(eng: Engines, sizes: Sizes) -> dict[str, Any]:
    """(a) every prompt asks for `sizes.new_tokens`."""
    lengths = random_lengths(sizes.prompts, sizes.prompt_len, 1)
    return throughput_scenario(eng, "offline", lengths, [sizes.new_tokens] * len(lengths), sizes, 100)


def mixed_scenario(eng: Engines, sizes: Sizes) -> dict[str, Any]:
    """(c) max_tokens uniform in `sizes.mixed_max_tokens`; only requested tokens count."""
    lengths = random_lengths(sizes.prompts, sizes.prompt_len, 2)
    max_tokens = random_lengths(sizes.prompts, sizes.mixed_max_tokens, 3)
    return throughput_scenario(eng, "mixed", lengths, max_tokens, sizes, 200)


def batch1_scenario(eng: Engines, sizes: Sizes) -> dict[str, Any]:
    """(b) TTFT = time for 1 token; decode latency = (time for 1 + N tokens - TTFT) / N; best of 3."""
    n, length = sizes.decode_tokens, [sizes.ttft_prompt]
    runs = {"ours": run_ours, "baseline": partial(run_baseline, batch_size=1)}
    warm_up(eng)
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "baseline": []}
    tokens: dict[str, list[list[int]]] = {}
    bad = 0
    for r in range(max(3, sizes.repeats)):
        first_prompt, prompt = (random_prompts(length, 300 + 2 * r + i, eng.config) for i in (0, 1))
        for side, run in runs.items():
            first, _ = timed(eng, run, first_prompt, [1])
            total, tokens[side] = timed(eng, run, prompt, [1 + n])
            times[side].append((first, total))
        bad += check_same("batch1", tokens["ours"], tokens["baseline"], sizes.check_tokens)
    out: dict[str, Any] = {}
    for side, pairs in times.items():
        out[f"ttft_{side}_ms"] = 1e3 * min(p[0] for p in pairs)
        out[f"decode_{side}_ms"] = 1e3 * (min(p[1] for p in pairs) - min(p[0] for p in pairs)) / n
    out["ttft_ratio"] = out["ttft_baseline_ms"] / out["ttft_ours_ms"]
    out["decode_latency_ratio"] = out["decode_baseline_ms"] / out["decode_ours_ms"]
    out["batch1_mismatches"] = bad
    return out


# ---------------------------------------------------------------- memory-bandwidth floor


def active_decode_bytes(config: dict[str, Any], dtype: torch.dtype, quantization: str | None = None) -> int:
    """Weight bytes one batch-1 decode step must read (embedding row, attention, norms, dense MLP or
    router + top-k experts + shared expert, final norm, lm_head). Router and expert bias are fp32;
    with int8 weights every element counts one byte (their per-row scales are under 1%)."""
    d, v, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    hd, h, hkv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    mlp = 3 * d  # SwiGLU weights per unit of width
    attn = (h + 2 * hkv) * hd * d + d * h * hd + 2 * hd + 2 * d  # qkv, dense, q/k norms, 2 layer norms
    dense = config["first_k_dense_replace"]
    shared = config.get("moe_shared_expert_intermediate_size") or config["moe_intermediate_size"]
    moe = config["num_experts_per_tok"] * mlp * config["moe_intermediate_size"]
    moe += mlp * shared * config.get("num_shared_experts", 0)
    router = config["num_experts"] * (d + 1)  # fp32 whatever the compute dtype
    elems = d + layers * attn + dense * mlp * config["intermediate_size"] + (layers - dense) * moe
    elems += d + v * d  # final norm, lm_head
    size = 1 if quantization == "int8" else torch.empty((), dtype=dtype).element_size()
    return elems * size + (layers - dense) * router * 4


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, tries: int = 5) -> float:
    """Best (bytes read + bytes written) / s of `dst.copy_(src)` on a float32 tensor of `nbytes`."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(tries):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def floor_scenario(eng: Engines, batch1: dict[str, Any]) -> dict[str, Any]:
    nbytes = active_decode_bytes(eng.config, eng.ours.dtype, eng.ours.engine.config.quantization)
    bandwidth = copy_bandwidth(eng.device)
    floor_ms = 1e3 * nbytes / bandwidth
    return {
        "active_decode_bytes": nbytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "decode_floor_ms": floor_ms,
        "ours_decode_over_floor": batch1["decode_ours_ms"] / floor_ms,
        "baseline_decode_over_floor": batch1["decode_baseline_ms"] / floor_ms,
    }


@torch.inference_mode()
def deviation_scenario(eng: Engines, prompts: int = 3, length: int = 128) -> dict[str, Any]:
    """Our full-sequence logits against the baseline's on the same prompts: the largest and the mean
    |difference| in units of the baseline's logit std, and how often the argmax agrees."""
    worst, mean, agree = 0.0, 0.0, 0.0
    for ids in random_prompts([length] * prompts, 555, eng.config):
        ours = eng.ours.logits(ids).float().cpu()
        ref = eng.baseline(torch.tensor([ids], device=eng.device)).logits[0].float().cpu()
        diff = (ours - ref).abs() / ref.std()
        worst, mean = max(worst, diff.max().item()), mean + diff.mean().item() / prompts
        agree += (ours.argmax(-1) == ref.argmax(-1)).float().mean().item() / prompts
    return {"logit_max_dev_std": worst, "logit_mean_dev_std": mean, "logit_top1_agreement": agree}


def run_all(eng: Engines, sizes: Sizes) -> dict[str, Any]:
    """Every scenario on loaded engines; one flat dict of results."""
    results: dict[str, Any] = {
        "ours_dtype": str(eng.ours.engine.dtype).removeprefix("torch."),
        "ours_decode_graph": eng.ours.engine.runner.decode_graph is not None,
        "ours_quantization": eng.ours.engine.config.quantization,
    }
    for name, scenario in (("offline", offline_scenario), ("batch 1", batch1_scenario)):
        log(f"scenario: {name}")
        results.update(scenario(eng, sizes))
    results.update(floor_scenario(eng, results))
    results.update(deviation_scenario(eng))
    log("scenario: mixed")
    results.update(mixed_scenario(eng, sizes))
    results["sizes"] = dataclasses.asdict(sizes)
    return results


def markdown_table(r: dict[str, Any], machine: dict[str, Any]) -> str:
    s = r["sizes"]
    n, (lo, hi) = s["prompts"], s["mixed_max_tokens"]
    rows = [  # (scenario, metric, key of ours, key of the baseline, key of the ratio)
        (
            f"offline, {n} prompts x {s['new_tokens']} new",
            "generated tok/s",
            "offline_",
            "_tok_s",
            "offline_throughput",
        ),
        (f"batch 1, TTFT at {s['ttft_prompt']} prompt tokens", "ms", "ttft_", "_ms", "ttft"),
        (f"batch 1, decode {s['decode_tokens']} tokens", "ms / token", "decode_", "_ms", "decode_latency"),
        (f"mixed, {n} prompts x {lo}-{hi} new", "useful tok/s", "mixed_", "_tok_s", "mixed_throughput"),
    ]
    lines = ["| scenario | metric | ours | baseline | ratio (higher is better) |", "|---|---|---|---|---|"]
    for scenario, metric, pre, post, ratio in rows:
        ours, base, x = r[f"{pre}ours{post}"], r[f"{pre}baseline{post}"], r[f"{ratio}_ratio"]
        lines.append(f"| {scenario} | {metric} | {ours:.2f} | {base:.2f} | {x:.2f}x |")
    lines.append(
        f"| batch-1 decode / bandwidth floor ({r['decode_floor_ms']:.2f} ms) | x floor "
        f"| {r['ours_decode_over_floor']:.2f}x | {r['baseline_decode_over_floor']:.2f}x | |"
    )
    lines.append(
        f"| logits vs the baseline's ({r['logit_top1_agreement']:.1%} same argmax) | max / mean "
        f"abs diff, in logit std | {r['logit_max_dev_std']:.2e} / {r['logit_mean_dev_std']:.2e} | | |"
    )
    gpu = f", {machine['gpu']}" if "gpu" in machine else ""
    bf16 = "with" if machine.get("cpu_bf16_arithmetic") else "without"
    head = (
        f"Machine: {machine['cpu']} ({bf16} bf16 arithmetic), {machine['cores']} cores, torch "
        f"{machine['torch']}, {machine['threads']} threads{gpu}. Ours: {r['ours_dtype']}"
        f"{' with int8 weights' if r.get('ours_quantization') == 'int8' else ''}, decode graph "
        f"{'on' if r['ours_decode_graph'] else 'off'}. Baseline batch sizes: offline "
        f"{r['offline_baseline_batch_size']}, mixed {r['mixed_baseline_batch_size']}."
    )
    return head + "\n\n" + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 prompts, 32 new tokens (< 3 min on 2 cores)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout, the rest on stderr")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--real-config", choices=sorted(REAL_SPECS), help="real model shapes (GPU only)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, help="timed runs per engine and scenario (default 2)")
    ap.add_argument(
        "--ours-dtype",
        choices=["float32", "bfloat16", "auto"],
        help="our engine's dtype (default float32 on CPU; auto: the engine's choice for this CPU)",
    )
    ap.add_argument("--quantization", choices=["int8"], help="our weights quantized (engine.int8)")
    ap.add_argument(
        "--decode-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="our compiled decode graph (engine.decode_graph; default: the engine's default, on)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if os.getloadavg()[0] > 0.5:
        log(f"note: load average {os.getloadavg()[0]:.2f} before start; other jobs will skew the times")
    device, sizes, t0 = torch.device(args.device), QUICK if args.quick else FULL, time.perf_counter()
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    if args.real_config and device.type != "cuda":
        ap.error("--real-config needs --device cuda (the model is tens of GB)")
    if args.real_config:
        folder = ensure_real_checkpoint(BENCH_ROOT / args.real_config, args.real_config, device)
    else:
        folder = ensure_bench_checkpoint(BENCH_ROOT / "ling-bench")
    quantized = {"quantization": args.quantization} if args.quantization else None
    eng = load_engines(folder, device, args.ours_dtype, args.decode_graph, quantized)
    results = run_all(eng, sizes)
    machine = machine_info(device)
    results.update(
        checkpoint=str(folder.relative_to(REPO)),
        config=eng.config,
        machine=machine,
        load_s=eng.load_s,
        git=git_state(),
        total_s=time.perf_counter() - t0,
    )
    print(markdown_table(results, machine), file=sys.stderr if args.json else sys.stdout)
    variant = "" if results["ours_dtype"] == "float32" else "-" + results["ours_dtype"]
    variant += "-int8" if args.quantization else ""
    variant += "" if results["ours_decode_graph"] or device.type == "cuda" else "-eager"
    name = f"engine-{device.type}{'-' + args.real_config if args.real_config else ''}{variant}"
    name += "-quick" * args.quick
    out = REPO / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
