"""Constrained decoding benchmark: generated tokens/s with a grammar against without, same requests.

Checkpoint: the bench model with the demo tokenizer (`.bailing/bench/ling-bench-text`, as
bench/service.py; structured output needs a tokenizer), prefix caching off so the same prompts can
run on both sides. Per dtype (float32; bfloat16 too where the CPU has bf16 arithmetic) and scenario,
both sides generate from the same 32-token prompts with the same seeds at temperature 1:
- fixed-length regex, batch 1 and 32: `[a-z ]{N}` with N past what max_tokens tokens can write, and
  ignore_eos on both sides, so every sample of either side generates exactly max_tokens tokens;
- JSON schema, batch 1 and 32 (bench.structured_probe.JSON_SCHEMA, nested, enums, integers,
  arrays): the constrained side stops at the end of its object (eos allowed); the free side then
  generates, per request, as many tokens as the constrained one did (ignore_eos, max_tokens = that
  count), so both sides do the same amount of work.
A warm-up run (the constrained side), then `repeats` rounds alternating which side goes first;
medians of tok/s and of the per-round ratio. Then one profiled run of each side
(bench.structured_probe.StepProfile) for where the time goes, and llguidance's mask fill alone on
the bench tokenizer. Writes bench/results/structured[-quick].json and .md, prints the markdown.
Usage: python -m bench.structured [--quick] [--json] [--repeats N] [--threads N] [--dtypes a,b]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from bench.checkpoints import BENCH_SPEC, ensure_bench_checkpoint
from bench.harness import REPO, git_state, log, machine_info, report
from bench.service import CHECKPOINT
from bench.structured_probe import (
    StepProfile,
    fixed_length_grammar,
    json_grammar,
    longest_token_chars,
    mask_fill_micro,
    torch_ops_micro,
)
from bench.structured_report import NOTES, PROMPT_TOKENS, markdown
from engine import LLM, SamplingParams
from engine.model_loader import cpu_has_bf16_arithmetic

SEED = 4321
REAL_VOCAB = 157184  # Ling's vocabulary: what `apply`'s torch ops cost at the real size


@dataclasses.dataclass(frozen=True)
class Sizes:
    batches: tuple[int, ...] = (1, 32)
    regex_tokens: dict[int, int] = dataclasses.field(default_factory=lambda: {1: 64, 32: 24})
    json_max_tokens: int = 96  # a cap; the schema's objects end well before it (~30-50 tokens)
    repeats: dict[int, int] = dataclasses.field(default_factory=lambda: {1: 7, 32: 3})  # rounds per batch
    micro_masks: int = 400


FULL = Sizes()
QUICK = Sizes(
    batches=(1, 4), regex_tokens={1: 8, 4: 8}, json_max_tokens=96, repeats={1: 1, 4: 1}, micro_masks=50
)


@dataclasses.dataclass(frozen=True)
class Scenario:
    grammar: str  # "regex" | "json"
    batch: int
    max_tokens: int

    @property
    def label(self) -> str:
        return f"{'fixed-length regex' if self.grammar == 'regex' else 'JSON schema'}, batch {self.batch}"


def make_prompts(n: int, seed: int, high: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, high) for _ in range(PROMPT_TOKENS)] for _ in range(n)]


def run_side(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]) -> dict[str, Any]:
    """One `generate` of the batch: seconds, tokens per request, finish reasons, texts, mask counts."""
    masks = llm.engine.structured.get().masks
    prefetched, computed = masks.prefetched, masks.computed
    t0, cpu0 = time.perf_counter(), time.process_time()
    outs = llm.generate(prompts, params)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    counts = [len(o.token_ids) for o in outs]
    first = max(o.metrics.time_to_first_token_s for o in outs)  # every prompt is in the first step
    return {
        "s": seconds,
        "tok_s": sum(counts) / seconds,
        "cpu_s": cpu,  # CPU seconds of the whole process: every thread, mask prefetch included
        "decode_tok_s": (sum(counts) - len(outs)) / max(seconds - first, 1e-9),
        "counts": counts,
        "finish": [o.finish_reason for o in outs],
        "texts": [o.text for o in outs],
        "prefetched": masks.prefetched - prefetched,
        "computed": masks.computed - computed,
    }


def _valid(sc: Scenario, run: dict[str, Any]) -> int:
    """Constrained samples whose output is what the grammar says (and that did not fail)."""
    ok = 0
    for text, n, finish in zip(run["texts"], run["counts"], run["finish"], strict=True):
        if sc.grammar == "regex":
            ok += finish == "length" and n == sc.max_tokens and re.fullmatch(r"[a-z ]*", text) is not None
        else:
            with contextlib.suppress(ValueError):
                ok += finish == "stop" and isinstance(json.loads(text), dict)
    return ok


class ScenarioRunner:
    """The two sides' SamplingParams for one scenario on one engine."""

    def __init__(self, llm: LLM, sc: Scenario, token_chars: int) -> None:
        self.llm, self.sc = llm, sc
        self.so = llm.engine.structured.get()
        self.grammar = (
            fixed_length_grammar(sc.max_tokens, token_chars) if sc.grammar == "regex" else json_grammar()
        )
        self.prompts = make_prompts(sc.batch, SEED + sc.batch, min(2000, len(llm.tokenizer)))
        self.counts = [sc.max_tokens] * sc.batch  # the free side's tokens per request
        self.build_s: list[float] = []

    def constrained(self) -> list[SamplingParams]:
        """Fresh constraints every run (they hold per-request state); their build time is recorded."""
        t0 = time.perf_counter()
        constraints = [self.so.constraint(self.grammar) for _ in range(self.sc.batch)]
        self.build_s.append((time.perf_counter() - t0) / self.sc.batch)
        ignore_eos = self.sc.grammar == "regex"
        return [
            SamplingParams(
                max_tokens=self.sc.max_tokens,
                temperature=1.0,
                seed=SEED + i,
                ignore_eos=ignore_eos,
                constraint=c,
            )
            for i, c in enumerate(constraints)
        ]

    def free(self) -> list[SamplingParams]:
        return [
            SamplingParams(max_tokens=n, temperature=1.0, seed=SEED + i, ignore_eos=True)
            for i, n in enumerate(self.counts)
        ]

    def side(self, name: str) -> dict[str, Any]:
        run = run_side(self.llm, self.prompts, self.constrained() if name == "constrained" else self.free())
        log(f"  {name}: {sum(run['counts'])} tokens in {run['s']:.2f} s ({run['tok_s']:.1f} tok/s)")
        return run


def run_scenario(llm: LLM, sc: Scenario, repeats: int, token_chars: int) -> dict[str, Any]:
    """A warm-up, `repeats` alternating rounds, then one profiled run of each side."""
    runner = ScenarioRunner(llm, sc, token_chars)
    warm = runner.side("constrained")
    runner.counts = warm["counts"]  # equal to max_tokens for the regex, the object's length for JSON
    runs: dict[str, list[dict[str, Any]]] = {"free": [], "constrained": []}
    for r in range(repeats):
        for name in ("free", "constrained") if r % 2 == 0 else ("constrained", "free"):
            runs[name].append(runner.side(name))
    profiles = {}
    for name in ("free", "constrained"):
        with StepProfile(llm) as prof:
            run = runner.side(name)
        profiles[name] = prof.summary(sum(run["counts"]))
    free_tok_s = statistics.median(x["tok_s"] for x in runs["free"])
    con_tok_s = statistics.median(x["tok_s"] for x in runs["constrained"])
    pairs = list(zip(runs["free"], runs["constrained"], strict=True))
    paired = [c["tok_s"] / f["tok_s"] for f, c in pairs]
    decode_paired = [c["decode_tok_s"] / f["decode_tok_s"] for f, c in pairs]
    cpu_paired = [f["cpu_s"] / c["cpu_s"] for f, c in pairs]  # same tokens on both sides
    return {
        **dataclasses.asdict(sc),
        "label": sc.label,
        "tokens_per_run": sum(runner.counts),
        "free_tok_s": free_tok_s,
        "constrained_tok_s": con_tok_s,
        "ratio": statistics.median(paired),
        "paired_ratios": paired,
        "decode_ratio": statistics.median(decode_paired),
        "decode_paired_ratios": decode_paired,
        "cpu_ratio": statistics.median(cpu_paired),
        "cpu_paired_ratios": cpu_paired,
        "same_counts": all(x["counts"] == runner.counts for x in runs["free"] + runs["constrained"]),
        "valid": min(_valid(sc, x) for x in [warm, *runs["constrained"]]),
        "finished_by_grammar": sum(f == "stop" for f in warm["finish"]),
        "masks_prefetched": sum(x["prefetched"] for x in runs["constrained"]),
        "masks_computed": sum(x["computed"] for x in runs["constrained"]),
        "grammar_build_us": 1e6 * statistics.median(runner.build_s),
        "sample_text": warm["texts"][0][:120],
        "profile": profiles,
    }


def load_llm(dtype: str) -> LLM:
    folder = ensure_bench_checkpoint(CHECKPOINT, BENCH_SPEC, with_tokenizer=True)
    llm = LLM(folder, dtype=dtype, enable_prefix_caching=False, max_num_seqs=64)
    if not llm.engine.wait_compiled():
        log("warning: the decode graph did not compile; decode steps run eager")
    return llm


def run_dtype(dtype: str, sizes: Sizes) -> dict[str, Any]:
    t0 = time.perf_counter()
    llm = load_llm(dtype)
    log(f"{dtype}: engine ready in {time.perf_counter() - t0:.1f} s")
    token_chars = longest_token_chars(llm.tokenizer)
    rows = []
    try:
        for grammar in ("regex", "json"):
            for batch in sizes.batches:
                tokens = sizes.regex_tokens[batch] if grammar == "regex" else sizes.json_max_tokens
                sc = Scenario(grammar, batch, tokens)
                log(f"{dtype}: {sc.label}")
                rows.append({"dtype": dtype, **run_scenario(llm, sc, sizes.repeats[batch], token_chars)})
        micro = micro_benchmarks(llm, sizes, token_chars)
    finally:
        llm.close()
    return {"rows": rows, "micro": micro, "longest_token_chars": token_chars}


def run_dtype_alone(dtype: str, passed: list[str]) -> dict[str, Any]:
    """`run_dtype` in a fresh process (its log on our stderr, its result as JSON on its stdout): a second
    engine's decode-graph compile in the process that closed the first has segfaulted inside torch's
    dynamo (FakeTensorMode.__enter__ on the compile thread, torch 2.11, three runs of three)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.structured", "--child-dtype", dtype, *passed],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def micro_benchmarks(llm: LLM, sizes: Sizes, token_chars: int) -> dict[str, Any]:
    """llguidance's fill per mask on the bench tokenizer, and apply's torch ops, without a model."""
    so = llm.engine.structured.get()
    vocab = llm.engine.model.runtime.vocab_size
    regex = fixed_length_grammar(max(sizes.regex_tokens.values()), token_chars)
    return {
        "tokenizer_tokens": len(llm.tokenizer),
        "vocab": vocab,
        "fill_regex": mask_fill_micro(so.tokenizer, regex, sizes.micro_masks, SEED),
        "fill_json": mask_fill_micro(so.tokenizer, json_grammar(), sizes.micro_masks, SEED),
        "torch_ops": {
            f"{rows} x {v}": torch_ops_micro(rows, v) for v in (vocab, REAL_VOCAB) for rows in sizes.batches
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 1 and 4, 8 tokens, 1 round")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout, the rest on stderr")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per scenario (default 7 at batch 1, 3 at 32)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument(
        "--dtypes",
        default=None,
        help="comma-separated (default float32, plus bfloat16 where the CPU has bf16 arithmetic)",
    )
    ap.add_argument("--child-dtype", default=None, help=argparse.SUPPRESS)  # run_dtype_alone's child
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=dict.fromkeys(sizes.batches, args.repeats))
    if args.child_dtype:
        print(json.dumps(run_dtype(args.child_dtype, sizes)))
        return
    dtypes = args.dtypes.split(",") if args.dtypes else ["float32"] + ["bfloat16"] * cpu_has_bf16_arithmetic()
    passed = ["--quick"] if args.quick else []
    passed += ["--threads", str(args.threads)] if args.threads else []
    passed += ["--repeats", str(args.repeats)] if args.repeats else []
    t0, load = time.perf_counter(), os.getloadavg()[0]
    if load > 0.5:
        log(f"note: load average {load:.2f} before start; other jobs will skew the times")
    result: dict[str, Any] = {"dtypes": {d: run_dtype_alone(d, passed) for d in dtypes}}
    result.update(
        sizes=dataclasses.asdict(sizes),
        machine=machine_info(torch.device("cpu")),
        git=git_state(),
        loadavg_at_start=load,
        total_s=time.perf_counter() - t0,
        notes=NOTES,
    )
    table = markdown(result)
    report("structured", args.quick, result, table, args.json)
    md = REPO / "bench" / "results" / f"structured{'-quick' if args.quick else ''}.md"
    md.write_text(table + "\n")
    log(f"wrote {md.relative_to(REPO)}")


if __name__ == "__main__":
    main()
