"""bench/parallel.py: --quick runs TP=1, TP=2 and TP=2+EP on a small checkpoint with identical greedy
tokens and counts the bytes between ranks; the per-GPU plan of the real configs adds up."""

from __future__ import annotations

import json

import pytest

from bench import parallel, parallel_plan

pytestmark = pytest.mark.slow


def test_quick_mode_measures_every_layout(demo_ling):
    result = json.loads(json.dumps(parallel.run(quick=True, folder=str(demo_ling))))
    layouts = result["layouts"]
    assert set(layouts) == {"TP=1", "TP=2", "TP=2+EP"} and result["same_tokens"]
    for name in ("TP=2", "TP=2+EP"):
        d = layouts[name]["decode_bytes_per_token"]
        assert d["all_reduce"] > 0 and d["gather"] > 0 and d["broadcast"] > 0
    assert (
        layouts["TP=2"]["decode_bytes_per_token"]["all_reduce"]
        == layouts["TP=2+EP"]["decode_bytes_per_token"]["all_reduce"]
    )
    table = parallel.markdown(result, {"cpu": "x", "cores": 2, "torch": "t"})
    assert "| TP=2+EP | 2 x 1 |" in table and "| Ling-1T (999.7B) |" in table


def test_the_plan_matches_the_published_sizes():
    assert parallel_plan.total_params(parallel_plan.LING_FLASH) == pytest.approx(102.89e9, rel=1e-3)
    assert parallel_plan.total_params(parallel_plan.LING_1T) == pytest.approx(1e12, rel=0.01)
    flash_tp2 = parallel_plan.weights_per_gpu(parallel_plan.LING_FLASH, 2, fp8=False)
    assert flash_tp2 == pytest.approx(
        parallel_plan.total_params(parallel_plan.LING_FLASH), rel=0.01
    )  # 2 B/param / 2
    assert (
        parallel_plan.kv_bytes_per_token(parallel_plan.LING_1T, 16) == 2 * 80 * 1 * 128 * 2
    )  # a KV head per rank
