"""bench/service.py's report: per-round results of its three sides in, medians over rounds, ratios paired
within rounds (gRPC / in-process, HTTP / gRPC) and the markdown table out.

Sides: "in_process" (an `LLMEngine` in the benchmark), "service" (the service over gRPC; the key older
results files use) and "http" (the service over the OpenAI API, SSE).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

SIDES = ("in_process", "service", "http")
CPU_KEYS = ("gateway_cpu_s", "worker_cpu_s", "idle_worker_cpu_s", "client_cpu_s")


def summarize(sizes: Any, rounds: list[dict[str, dict[str, Any]]], single: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds; the ratios and the added TTFTs are paired within each round."""

    def median_of(side: str) -> dict[str, float]:
        return {k: statistics.median(r[side][k] for r in rounds) for k in rounds[0][side]}

    def paired(key: str, side: str, base: str) -> list[float]:
        return [r[side][key] / r[base][key] for r in rounds]

    def added(side: str, base: str) -> list[float]:
        return [r[side]["median_ttft_ms"] - r[base]["median_ttft_ms"] for r in rounds]

    out: dict[str, Any] = {"sizes": dataclasses.asdict(sizes), "rounds": rounds}
    out.update({side: median_of(side) for side in SIDES})
    for prefix, side, base in (("", "service", "in_process"), ("http_", "http", "service")):
        for name, key in (("throughput", "tokens_per_s"), ("ttft", "median_ttft_ms")):
            out[f"{prefix}{name}_ratio_per_round"] = paired(key, side, base)
            out[f"{prefix}{name}_ratio"] = statistics.median(paired(key, side, base))
        out[f"{prefix}p99_ttft_ratio"] = statistics.median(paired("p99_ttft_ms", side, base))
        out[f"{prefix}added_median_ttft_ms_per_round"] = added(side, base)
        out[f"{prefix}added_median_ttft_ms"] = statistics.median(added(side, base))
    out["http_vs_in_process_throughput_ratio"] = statistics.median(
        paired("tokens_per_s", "http", "in_process")
    )
    out["http_vs_in_process_ttft_ratio"] = statistics.median(paired("median_ttft_ms", "http", "in_process"))
    out.update(single)
    out["added_single_ttft_ms"] = single["single_ttft_service_ms"] - single["single_ttft_in_process_ms"]
    out["http_added_single_ttft_ms"] = single["single_ttft_http_ms"] - single["single_ttft_service_ms"]
    return out


def _per_round(r: dict[str, Any], prefix: str) -> str:
    pairs = zip(r[f"{prefix}throughput_ratio_per_round"], r[f"{prefix}ttft_ratio_per_round"], strict=True)
    return ", ".join(f"{rate:.2f}x / {ttft:.2f}x" for rate, ttft in pairs)


def _share(s: dict[str, Any], prefix: str = "") -> str:
    return (
        f"{s[prefix + 'pickup_ms']:.1f} + {s[prefix + 'relay_ms']:.1f} = "
        f"{s[prefix + 'added_ms']:.1f} / {s[prefix + 'added_p99_ms']:.1f}"
    )


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(r: dict[str, Any], machine: dict[str, Any]) -> str:
    s, sides = r["sizes"], [r["http"], r["service"], r["in_process"]]
    head = f"{s['requests']} concurrent streams x {s['new_tokens']} new tokens"
    head += f" ({s['prompt_tokens']}-token prompts), {r['dtype']}, {s['repeats']} rounds"

    def each(key: str, fmt: str = ".1f") -> list[str]:
        return [format(side[key], fmt) for side in sides]

    http_added, added = r["http_added_median_ttft_ms"], r["added_median_ttft_ms"]
    single = (r["single_ttft_http_ms"], r["single_ttft_service_ms"], r["single_ttft_in_process_ms"])
    rows = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}. {head}.",
        "",
        _row(
            "metric",
            "HTTP / SSE (gateway + Redis + worker)",
            "gRPC (gateway + Redis + worker)",
            "in-process engine",
            "HTTP / gRPC",
            "target",
            "gRPC / in-process",
            "target",
        ),
        "|---|---|---|---|---|---|---|---|",
        _row(
            "generated tok/s",
            *each("tokens_per_s"),
            f"**{r['http_throughput_ratio']:.2f}x**",
            ">= 0.91x (1/1.1)",
            f"**{r['throughput_ratio']:.2f}x**",
            ">= 0.85x",
        ),
        _row(
            "p50 TTFT, concurrent (ms)",
            *each("median_ttft_ms"),
            f"**{r['http_ttft_ratio']:.2f}x** ({http_added:+.0f} ms)",
            "<= 1.1x",
            f"**{r['ttft_ratio']:.2f}x** ({added:+.0f} ms)",
            "<= 1.15x",
        ),
        _row(
            "p99 TTFT, concurrent (ms)",
            *each("p99_ttft_ms"),
            f"{r['http_p99_ttft_ratio']:.2f}x",
            "<= 1.1x",
            f"{r['p99_ttft_ratio']:.2f}x",
            "",
        ),
        _row(
            "per round: throughput / p50 TTFT ratio",
            "",
            "",
            "",
            _per_round(r, "http_"),
            "",
            _per_round(r, ""),
            "",
        ),
        _row("tokens generated per burst", *each("tokens", ".0f"), "", "", "", ""),
        _row(
            "service's share of a request's TTFT, concurrent: pickup + relay = p50 / p99 (ms)",
            _share(r["http"]),
            _share(r["service"]),
            *[""] * 5,
        ),
        _row(
            "CPU per burst: gateway / worker / idle twin worker / client (s)",
            *(" / ".join(f"{x[k]:.2f}" for k in CPU_KEYS) for x in sides[:2]),
            *[""] * 5,
        ),
        _row(
            "TTFT, one request alone (ms)",
            *(f"{v:.1f}" for v in single),
            f"{r['http_added_single_ttft_ms']:+.1f} ms",
            "",
            f"{r['added_single_ttft_ms']:+.1f} ms (paired medians)",
            "",
        ),
        _row(
            "service's share, one request alone: pickup + relay = p50 / p99 (ms)",
            _share(r, "single_http_"),
            f"**{_share(r, 'single_')}**",
            *[""] * 4,
            "<= 15 ms",
        ),
    ]
    return "\n".join(rows)
