"""bench/omp_pools.py: both children run and the table reads their numbers."""

from __future__ import annotations

import pytest

from bench.omp_pools import _ENGINE, _OPS, _child, markdown_table

pytestmark = pytest.mark.slow


def test_children_measure_and_the_table_reports_them(demo_ling):
    ops = {case: _child(_OPS, "float32", case) for case in ("alone", "other-pool")}
    assert set(ops["alone"]) == {"elementwise_ms", "linear_ms", "sdpa_ms"}
    assert all(v > 0 for r in ops.values() for v in r.values())
    engine = {
        case: _child(_ENGINE, "float32", case, str(demo_ling))["ttft_ms"]
        for case in ("passing-thread", "caller-thread")
    }
    assert all(t > 0 for t in engine.values())
    result = {
        "ops": {f"float32/{case}": r for case, r in ops.items()},
        "engine": {f"float32/{case}": t for case, t in engine.items()},
    }
    table = markdown_table(result, {"cpu": "test", "cores": 2, "torch": "x", "threads": 2})
    assert "engine loop" in table and f"{engine['caller-thread']:.1f}" in table
