"""Smoke test of bench/sampling.py on a tiny checkpoint: every way runs, the forked samples draw the
same tokens as independent seeded requests, and the prompt is computed once with n (vs n times)."""

from __future__ import annotations

import pytest

from bench import sampling
from bench.checkpoints import ensure_bench_checkpoint
from bench.engine_pair import load_engines
from tests.bench.test_bench_engine_smoke import TINY


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench") / "tiny"
    ensure_bench_checkpoint(folder, TINY, overrides={})
    return load_engines(folder, "cpu")


def test_scenario_measures_each_way_and_the_samples_match(engines, monkeypatch):
    monkeypatch.setattr(sampling, "NEW_TOKENS", 6)
    row = sampling.scenario(engines, n=3, repeats=1, prompt_tokens=40)
    assert row["same_tokens"] is True
    assert row["n_prompt_tokens"] == 40 and row["independent_prompt_tokens"] == 120
    assert row["n_peak_blocks"] < row["independent_peak_blocks"]
    assert all(row[f"{way}_s"] > 0 for way in ("n", "independent", "transformers"))
    assert row["n_first_s"] <= row["n_s"]
    table = sampling.markdown_table([row], {"cpu": "x", "cores": 2, "torch": "t", "threads": 1}, 40)
    assert "ours, `n=3` (fork)" in table and "transformers" in table
