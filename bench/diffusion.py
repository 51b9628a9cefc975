"""Diffusion decoding benchmark: tokens per forward and tokens/s of each decoder and threshold, with and
without the per-block prefix KV cache, next to autoregressive decoding of the same weights.

Checkpoint: the engine benchmark's model shape (bench/engine.py BENCH_SPEC, 8 layers, hidden 512,
32 experts) written as LLaDA2 (`.bailing/bench/llada2-bench`, fp32, demo tokenizer with `<|mask|>`)
with lm_head scaled by LM_HEAD_SCALE so the random model is confident enough for thresholds to
matter ("a confident bench model"). The same weights under Ling's architecture name
(`llada2-bench-ar`: causal attention, next-token decoding) are the autoregressive baseline, on the
same engine. Each row: `prompts` prompts of `prompt_tokens` random ids submitted together (batched in
the same engine steps), `gen_tokens` tokens each (ignore_eos), greedy; tokens/forward = generated
tokens / model forwards (NFE) per request, tokens/s = all generated tokens / wall time.
Writes bench/results/diffusion-cpu[-quick].json and prints a markdown table.
Usage: python -m bench.diffusion [--quick] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from bailing.demo.ling_config import LingDemoSpec
from bench.checkpoints import BENCH_ROOT, BENCH_SPEC, publish, stamp_matches
from bench.harness import git_state, log, machine_info, report
from engine import LLM, DiffusionParams, SamplingParams

LM_HEAD_SCALE = 40.0  # random weights are near-uniform; this makes the model commit several per step
DECODERS = ("llada2", "threshold", "hierarchy", "credit")
THRESHOLDS = (0.95, 0.9, 0.5)
WRITER = 1


@dataclasses.dataclass(frozen=True)
class Sizes:
    prompts: int = 4
    prompt_tokens: int = 64
    gen_tokens: int = 128
    block_length: int = 32
    decoders: tuple[str, ...] = DECODERS
    thresholds: tuple[float, ...] = THRESHOLDS


FULL = Sizes()
QUICK = Sizes(prompts=2, prompt_tokens=16, gen_tokens=32, block_length=16, decoders=("llada2", "threshold"),
              thresholds=(0.9,))  # fmt: skip


def ensure_checkpoints(root: Path = BENCH_ROOT, spec: LingDemoSpec = BENCH_SPEC) -> tuple[Path, Path]:
    """The LLaDA2 bench checkpoint and its autoregressive twin (same weight files, Ling's config)."""
    from bailing.demo.llada2 import write_llada2_checkpoint

    diff, ar = root / "llada2-bench", root / "llada2-bench-ar"
    stamp = {"writer": WRITER, "spec": dataclasses.asdict(spec), "lm_head_scale": LM_HEAD_SCALE}
    if not stamp_matches(diff, stamp):
        tmp = diff.with_name(diff.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"writing {diff} (first run only)")
        write_llada2_checkpoint(tmp, spec, seed=3, dtype=torch.float32, lm_head_scale=LM_HEAD_SCALE)
        publish(tmp, diff, stamp)
    if not stamp_matches(ar, stamp):
        tmp = ar.with_name(ar.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in diff.iterdir():
            if f.is_file() and f.name not in ("config.json", "bench_stamp.json"):
                os.link(f, tmp / f.name)  # the very same weight files
        config = json.loads((diff / "config.json").read_text())
        config.update(  # what LLaDA2 hard-wires, spelled out for Ling's parser
            architectures=["BailingMoeV2ForCausalLM"], model_type="bailing_moe_v2", use_qk_norm=True,
            num_nextn_predict_layers=0, moe_router_enable_expert_bias=True, score_function="sigmoid",
            norm_topk_prob=True,
        )  # fmt: skip
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        publish(tmp, ar, stamp)
    return diff, ar


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, min(vocab, 2000), (n, length), generator=g).tolist()


def run_one(
    llm: LLM, batch: list[list[int]], params: SamplingParams
) -> tuple[dict[str, Any], list[list[int]]]:
    start = time.perf_counter()
    outs = llm.generate(batch, params)
    wall = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for o in outs)
    forwards = [o.num_forwards for o in outs]
    stats = {
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "forwards_per_request": sum(forwards) / len(forwards),
        "tokens_per_forward": tokens / sum(forwards),
    }
    return stats, [o.token_ids for o in outs]


def run(sizes: Sizes, root: Path = BENCH_ROOT, spec: LingDemoSpec = BENCH_SPEC) -> dict[str, Any]:
    diff_path, ar_path = ensure_checkpoints(root, spec)
    diff, ar = LLM(diff_path), LLM(ar_path)
    vocab = diff.model.runtime.vocab_size
    warm = prompts(1, 8, vocab, 0)
    ar.generate(warm, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    diff.generate(warm, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    rows = []
    seed = 1
    log("autoregressive")
    base, _ = run_one(ar, prompts(sizes.prompts, sizes.prompt_tokens, vocab, seed),
                   SamplingParams(max_tokens=sizes.gen_tokens, temperature=0, ignore_eos=True))  # fmt: skip
    rows.append({"decoder": "autoregressive", "threshold": None, "prefix_cache": True, **base})
    for decoder in sizes.decoders:
        for threshold in sizes.thresholds:
            seed += 1  # the same prompts with and without the cache: the outputs must be identical
            batch = prompts(sizes.prompts, sizes.prompt_tokens, vocab, seed)
            by_cache = {}
            for cache in (True, False):
                log(f"{decoder} threshold {threshold} prefix cache {cache}")
                d = DiffusionParams(
                    block_length=sizes.block_length, steps=sizes.block_length, threshold=threshold,
                    decoder=decoder, prefix_cache=cache,
                )  # fmt: skip
                params = SamplingParams(
                    max_tokens=sizes.gen_tokens, temperature=0, ignore_eos=True, diffusion=d
                )
                r, ids = run_one(diff, batch, params)
                r["vs_autoregressive"] = r["tokens_per_s"] / base["tokens_per_s"]
                by_cache[cache] = ids
                rows.append({"decoder": decoder, "threshold": threshold, "prefix_cache": cache, **r})
            rows[-1]["same_as_cached"] = by_cache[False] == by_cache[True]
            if not rows[-1]["same_as_cached"]:
                log(f"!!!!! WARNING {decoder} {threshold}: cached and uncached outputs differ")
    return {"rows": rows, "sizes": dataclasses.asdict(sizes), "lm_head_scale": LM_HEAD_SCALE}


def markdown_table(result: dict[str, Any], machine: dict[str, Any]) -> str:
    s = result["sizes"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, fp32. "
        f"{s['prompts']} prompts of {s['prompt_tokens']} tokens batched together, {s['gen_tokens']} new "
        f"tokens each, greedy, block length {s['block_length']}; LLaDA2 bench model (BENCH_SPEC, lm_head "
        f"x{result['lm_head_scale']:g}) and the same weights decoded autoregressively on the same engine.",
        "",
        "| decoder | threshold | prefix cache | forwards / request | tokens / forward | tokens/s | vs AR |"
        " same ids as cached |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        thr = "" if r["threshold"] is None else f"{r['threshold']:g}"
        cache = "KV cache" if r["decoder"] == "autoregressive" else ("yes" if r["prefix_cache"] else "no")
        vs = f"{r['vs_autoregressive']:.2f}x" if "vs_autoregressive" in r else "1.00x"
        lines.append(
            f"| {r['decoder']} | {thr} | {cache} | {r['forwards_per_request']:.1f} | "
            f"{r['tokens_per_forward']:.2f} | {r['tokens_per_s']:.1f} | {vs} | "
            f"{ {True: 'yes', False: 'NO'}.get(r.get('same_as_cached'), '') } |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 decoders, one threshold, short runs")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout, the rest on stderr")
    args = ap.parse_args()
    result = run(QUICK if args.quick else FULL)
    machine = machine_info(torch.device("cpu"))
    result.update(machine=machine, git=git_state())
    report("diffusion-cpu", args.quick, result, markdown_table(result, machine), args.json)


if __name__ == "__main__":
    main()
