"""bench.curves on the tiny golden checkpoint: both curves run, the tokens agree, the PNG is drawn."""

from __future__ import annotations

import dataclasses

from bench import curves
from bench.engine_pair import load_engines

SIZES = curves.CurveSizes(batches=(1, 3), batch_prompt=8, batch_new=3, contexts=(16, 40), decode_tokens=2)


def test_both_curves_run_agree_and_plot(golden_dir, tmp_path):
    eng = load_engines(golden_dir / "tiny-bailing", "cpu", engine_config={"max_num_seqs": 3})
    eng.baseline.set_attn_implementation("sdpa")
    result = curves.run_curves(eng, SIZES)
    assert [p["batch"] for p in result["batch"]] == [1, 3]
    assert [p["context"] for p in result["context"]] == [16, 40]
    assert all(p["mismatches"] == 0 for p in result["batch"] + result["context"])
    assert all(p["ours_tok_s"] > 0 and p["baseline_tok_s"] > 0 for p in result["batch"])
    table = curves.markdown_tables(result)
    assert "| 3 |" in table and "| 40 |" in table
    png = curves.plot(result, "smoke", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert dataclasses.asdict(SIZES) == result["sizes"]
