"""bench/service.py end to end on the demo checkpoint: both sides run and the report is consistent."""

from __future__ import annotations

import pytest

from bench.service import Sizes, markdown_table, run_benchmark

pytestmark = pytest.mark.slow


def test_service_benchmark_runs_both_sides(demo_ling):
    sizes = Sizes(requests=4, prompt_tokens=16, new_tokens=4, repeats=1, single=2)
    r = run_benchmark(sizes, demo_ling)
    for side in ("in_process", "service"):
        assert r[side]["tokens"] == 4 * 4  # ignore_eos: every request ran to max_tokens
        assert r[side]["median_ttft_ms"] > 0
    assert r["throughput_ratio"] == pytest.approx(
        r["service"]["tokens_per_s"] / r["in_process"]["tokens_per_s"]
    )
    table = markdown_table(r, {"cpu": "test", "cores": 2, "torch": "x"})
    assert "generated tok/s" in table and "median TTFT" in table
