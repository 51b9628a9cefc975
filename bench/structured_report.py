"""bench/structured.py's report: the result dict -> the markdown tables (throughput, where a step's time
goes, the micro-benchmarks) and the notes printed under them."""

from __future__ import annotations

from typing import Any

PROMPT_TOKENS, TARGET = 32, 0.9  # bench/structured.py's prompt length and the ratio target


def _split(p: dict[str, Any], name: str) -> float:
    return p.get(f"{name}_ms_per_step", 0.0)


def throughput_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| dtype | scenario | tokens / run | unconstrained tok/s | constrained tok/s | constrained / "
        "unconstrained (per round) | decode only (after the first token) | by process CPU time "
        "| target | valid outputs | masks prefetched / computed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "met" if r["ratio"] >= TARGET else "**not met**"
        lines.append(
            f"| {r['dtype']} | {r['label']} | {r['tokens_per_run']} | {r['free_tok_s']:.1f} "
            f"| {r['constrained_tok_s']:.1f} | **{r['ratio']:.2f}x** "
            f"({', '.join(f'{x:.2f}' for x in r['paired_ratios'])}) | {r['decode_ratio']:.2f}x "
            f"| {r['cpu_ratio']:.2f}x "
            f"| >= {TARGET}x: {met} "
            f"| {r['valid']}/{r['batch']} | {r['masks_prefetched']} / {r['masks_computed']} |"
        )
    return lines


def split_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| dtype | scenario | steps | step ms (free → constrained) | forward ms | sampler ms | `apply` ms "
        "(`masks()` wait / bitmask → bias / rest: add) | `advance` µs / token | prefetch fill "
        "µs / mask (side thread) | rest of step ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, c = r["profile"]["free"], r["profile"]["constrained"]
        apply, masks, bias = _split(c, "apply"), _split(c, "masks"), _split(c, "bias")

        def pair(name: str, f: dict = f, c: dict = c) -> str:
            return f"{_split(f, name):.2f} → {_split(c, name):.2f}"

        lines.append(
            f"| {r['dtype']} | {r['label']} | {c['steps']} | {pair('step')} | {pair('forward')} "
            f"| {pair('sampler')} | {apply:.2f} ({masks:.2f} / {bias:.2f} / {apply - masks - bias:.2f}) "
            f"| {c.get('advance_us_per_token', 0.0):.1f} | {c.get('fill_side_us_per_mask', 0.0):.1f} "
            f"| {pair('other')} |"
        )
    return lines


def micro_table(micro: dict[str, Any], dtype: str) -> list[str]:
    rx, js = micro["fill_regex"], micro["fill_json"]
    lines = [
        f"| {dtype}: measured alone (no model running) | fixed-length regex | JSON schema |",
        "|---|---|---|",
        "| llguidance fill, one matcher, µs / mask: mean, p50, p90 "
        f"| {rx['mean_us']:.1f}, {rx['p50_us']:.1f}, {rx['p90_us']:.1f} "
        f"| {js['mean_us']:.1f}, {js['p50_us']:.1f}, {js['p90_us']:.1f} |",
        f"| matcher build (µs, first) | {rx['build_us']:.0f} | {js['build_us']:.0f} |",
    ]
    for shape, ops in micro["torch_ops"].items():
        lines.append(
            f"| `apply`'s torch ops on {shape} logits, µs: the engine's byte-table bias add; the first "
            f"version's unpack + (clone, masked_fill) | {ops['bias_add_us']:.0f}; "
            f"{ops['unpack_us']:.0f} + {ops['clone_fill_us']:.0f} | |"
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["sizes"]
    bf16 = "with" if m.get("cpu_bf16_arithmetic") else "without"
    rows = [r for d in result["dtypes"].values() for r in d["rows"]]
    head = (
        f"Machine: {m['cpu']} ({bf16} bf16 arithmetic), {m['cores']} cores, torch {m['torch']}, "
        f"{m['threads']} threads; dtypes {', '.join(result['dtypes'])}; git {result['git']}; "
        f"{result['total_s']:.0f} s in all; load average {result['loadavg_at_start']:.2f} at start, "
        f"{m['loadavg_1min_at_end']:.2f} at the end. Timed rounds per batch size {s['repeats']}, after a "
        f"warm-up; {PROMPT_TOKENS}-token prompts, temperature 1, same seeds on both sides; "
        f"regex max_tokens {s['regex_tokens']}, JSON cap {s['json_max_tokens']}."
    )
    parts = [head, "", *throughput_table(rows), "", "Where a step's time goes (one profiled run per side):"]
    parts += ["", *split_table(rows)]
    for dtype, d in result["dtypes"].items():
        parts += ["", *micro_table(d["micro"], dtype)]
    parts += ["", *[f"- {note}" for note in result["notes"]]]
    return "\n".join(parts)


NOTES = [
    "Equal token counts: the regex rows use `[a-z ]{N}` with N = max_tokens x the longest token's "
    "characters + 1, so the grammar cannot complete (eos is never allowed) and with ignore_eos every "
    "sample of both sides writes exactly max_tokens tokens. The JSON rows stop where the object ends; "
    "the unconstrained side then runs each request to the same count (ignore_eos), and tok/s is taken "
    "from the actual counts.",
    "The tokenizer is the demo BPE (about 2k tokens) in a 32,768-id vocabulary: llguidance walks a small "
    "trie, so its fills are far cheaper than with a real 157k vocabulary; the torch ops (bitmask "
    "→ bias, add) scale with the logits' width, measured alone at 32,768 and at Ling's 157,184 ids.",
    "The profiled runs time each piece with wrappers (bench.structured_probe.StepProfile); the forward "
    "of a constrained step includes the CPU the prefetch thread takes from it on a busy machine.",
    "`masks()` wait is the sampler's time in `MaskPrefetcher.masks`: waiting on the prefetch future, "
    "the row copies, and the fills computed on the spot (`computed`: the first token of each request).",
]
