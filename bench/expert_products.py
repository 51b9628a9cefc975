"""The expert products of an offline decode step, measured per form (issue 19's offline target).

At 64 decoding sequences each of the bench model's 32 experts gets a handful of (token, slot) pairs,
so every expert product is a few rows against a 512 x 512 weight. This times, for R rows per expert,
the gate/up products of 7 layers x 32 experts (the bench model's MoE layers, weights streamed from
DRAM because 7 layers do not fit in cache) in each form the engine could use:
- `F.linear` per expert (what `FusedExperts._per_expert` runs);
- `W @ x^T` per expert (the column form, as the vocab product uses for few rows);
- MKL's packed GEMM per expert (`torch.ops.mkl._mkl_linear`, what inductor uses for fp32 linears);
- one padded `bmm` per layer over [E, R, H] (every expert the same rows: the best case of padding).
Usage: python -m bench.expert_products [--quick] [--json]   (make bench-expert-products)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from bench.harness import machine_info, report

EXPERTS, LAYERS, HIDDEN = 32, 7, 512
FORMS = ("linear", "column", "mkl_packed", "padded_bmm")


def timed_ms(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - t) / repeats


def measure(rows: int, weights: list[torch.Tensor], repeats: int) -> dict[str, float]:
    """ms for one pass over every layer's and expert's gate/up product of `rows` rows, per form."""
    xs = torch.randn(rows, HIDDEN)  # (R, H), the same rows for every expert
    stacked = xs.expand(EXPERTS, rows, HIDDEN).contiguous()  # (E, R, H)
    packed = [[torch.ops.mkl._mkl_reorder_linear_weight(w[e], rows) for e in range(EXPERTS)] for w in weights]
    forms = {
        "linear": lambda: [F.linear(xs, w[e]) for w in weights for e in range(EXPERTS)],
        "column": lambda: [w[e] @ xs.T for w in weights for e in range(EXPERTS)],
        "mkl_packed": lambda: [
            torch.ops.mkl._mkl_linear(xs, p[e], w[e], None, rows)
            for w, p in zip(weights, packed, strict=True)
            for e in range(EXPERTS)
        ],
        "padded_bmm": lambda: [torch.bmm(stacked, w.transpose(1, 2)) for w in weights],
    }
    reference = F.linear(xs, weights[0][3])
    # float32 sums in another order (MKL's packed kernel, a transposed product): ~1e-6 apart, also on
    # outputs near zero, where the default atol of 1e-8 would call that a mismatch
    assert torch.allclose(
        torch.ops.mkl._mkl_linear(xs, packed[0][3], weights[0][3], None, rows), reference, atol=1e-5
    )
    assert torch.allclose((weights[0][3] @ xs.T).T, reference, atol=1e-5)
    return {name: timed_ms(fn, repeats) for name, fn in forms.items()}


def markdown_table(result: dict[str, Any], machine: dict[str, Any]) -> str:
    gb = result["weight_bytes"] / 1e9
    lines = [
        f"Gate/up products of {result['layers']} layers x {EXPERTS} experts "
        f"({gb * 1e3:.0f} MB of fp32 weights), ms (GB/s of weights). "
        f"{machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}.",
        "",
        "| rows per expert | " + " | ".join(FORMS) + " |",
        "|---|" + "---|" * len(FORMS),
    ]
    for rows, ms in result["rows"].items():
        cells = [f"{ms[f]:.1f} ({gb / ms[f] * 1e3:.1f})" for f in FORMS]
        lines.append(f"| {rows} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, rows 4 and 8, few repeats")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    layers, row_counts, repeats = (2, (4, 8), 3) if args.quick else (LAYERS, (4, 8, 16, 32), 20)
    weights = [torch.randn(EXPERTS, HIDDEN, HIDDEN) / 20 for _ in range(layers)]  # (E, 2I, H) each
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "layers": layers,
        "weight_bytes": sum(w.numel() * w.element_size() for w in weights),
        "rows": {rows: measure(rows, weights, repeats) for rows in row_counts},
    }
    machine = machine_info(torch.device("cpu"))
    result.update(machine=machine, seconds=round(time.perf_counter() - t0, 1))
    report("expert-products-cpu", args.quick, result, markdown_table(result, machine), args.json)


if __name__ == "__main__":
    main()
