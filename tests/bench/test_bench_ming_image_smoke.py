"""bench/ming_image.py's --quick sizes on the demo-size heads: both sides of the loop comparison run and
agree on the latents, the throughput scenario gives the same bytes concurrent and serial, the result is
plain JSON and the tables name every row. (The real run takes minutes.)"""

from __future__ import annotations

import json

import pytest

from bench import ming_image

pytestmark = pytest.mark.slow


def test_quick_mode_runs_both_scenarios(tmp_path):
    result = json.loads(json.dumps(ming_image.run(ming_image.QUICK, root=tmp_path, models=("demo",))))
    (case,) = result["models"]["demo"]["loop"]
    assert case["ours_s"] > 0 and case["diffusers_s"] > 0 and case["latents_max_diff"] < 1e-4
    t = result["models"]["demo"]["throughput"]
    assert t["same_bytes"] is True and t["speedup"] > 0 and t["requests"] == 4
    table = ming_image.markdown_table(result, {"cpu": "x", "cores": 2, "torch": "t"})
    assert "| demo | 512x512 | 2 |" in table and "| demo | 4 | 512x512 | 2 |" in table
