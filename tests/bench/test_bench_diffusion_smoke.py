"""bench/diffusion.py end to end on a tiny spec: the LLaDA2 checkpoint and its autoregressive twin
(same weight files, Ling's config) load and decode, every row is filled, cached and uncached
diffusion give the same ids, and the table names each decoder. (The real run takes minutes.)"""

from __future__ import annotations

import dataclasses

from bailing.demo.ling_config import LingDemoSpec
from bench import diffusion


def test_the_benchmark_runs_on_a_tiny_model(tmp_path):
    sizes = diffusion.Sizes(prompts=2, prompt_tokens=6, gen_tokens=12, block_length=4,
                            decoders=("llada2", "hierarchy"), thresholds=(0.9,))  # fmt: skip
    result = diffusion.run(
        sizes, root=tmp_path, spec=dataclasses.replace(LingDemoSpec(), max_position_embeddings=256)
    )
    rows = result["rows"]
    assert [r["decoder"] for r in rows] == ["autoregressive", "llada2", "llada2", "hierarchy", "hierarchy"]
    assert all(r["tokens"] == 2 * 12 for r in rows)
    assert rows[0]["tokens_per_forward"] == 1.0
    assert all(r["same_as_cached"] for r in rows[2::2])
    assert all(1.0 <= r["tokens_per_forward"] <= 4.0 for r in rows[1:])
    table = diffusion.markdown_table(result, {"cpu": "x", "cores": 2, "torch": "t"})
    assert "| hierarchy | 0.9 | no |" in table and "| autoregressive |" in table
