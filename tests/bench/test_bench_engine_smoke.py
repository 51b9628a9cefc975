"""Smoke test of bench/engine.py: every scenario runs on a tiny demo-writer checkpoint, and both engines
produce identical greedy tokens for the same prompts (so the benchmark compares like with like)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bailing.demo.writer import LingDemoSpec
from bench import engine as bench

TINY = LingDemoSpec(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_experts=8,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    moe_intermediate_size=32,
    max_position_embeddings=256,
)
SIZES = bench.Sizes(
    prompts=5,
    prompt_len=(3, 20),
    new_tokens=6,
    mixed_max_tokens=(1, 9),
    ttft_prompt=16,
    decode_tokens=4,
    batch_sizes=(2, 5),
    search_new_tokens=3,
    repeats=1,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Correctness does not need threads; the baseline's index_add_ is very slow when 2 contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> bench.Engines:
    folder = tmp_path_factory.mktemp("bench") / "tiny"
    bench.ensure_bench_checkpoint(folder, TINY, overrides={})  # vocab 2176: the demo tokenizer, padded
    return bench.load_engines(folder, "cpu")


def test_checkpoint_is_reused_when_the_stamp_matches(tmp_path: Path) -> None:
    folder = bench.ensure_bench_checkpoint(tmp_path / "ck", TINY, overrides={})
    mtime = (folder / "config.json").stat().st_mtime_ns
    assert bench.ensure_bench_checkpoint(folder, TINY, overrides={}) == folder
    assert (folder / "config.json").stat().st_mtime_ns == mtime
    bench.ensure_bench_checkpoint(folder, TINY, overrides={}, seed=1)  # another seed: rewritten
    assert (folder / "config.json").stat().st_mtime_ns != mtime


def test_ours_and_baseline_generate_identical_greedy_tokens(engines: bench.Engines) -> None:
    prompts = bench.random_prompts([17, 1, 40, 9, 3, 28], seed=7, config=engines.config)
    max_tokens = [12, 3, 12, 7, 1, 12]
    ours = bench.run_ours(engines, prompts, max_tokens)
    for batch_size in (1, 4, 6):  # left padding must not change the baseline's tokens
        assert bench.run_baseline(engines, prompts, max_tokens, batch_size) == ours
    assert [len(t) for t in ours] == max_tokens


def test_every_scenario_reports_positive_ratios_and_no_mismatch(engines: bench.Engines) -> None:
    results = bench.run_all(engines, SIZES)
    for key in ("offline_throughput_ratio", "decode_latency_ratio", "mixed_throughput_ratio", "ttft_ratio"):
        assert isinstance(results[key], float) and results[key] > 0, key
    for key in ("offline_ours_tok_s", "offline_baseline_tok_s", "decode_ours_ms", "decode_floor_ms"):
        assert results[key] > 0, key
    assert results["offline_mismatches"] == results["mixed_mismatches"] == results["batch1_mismatches"] == 0
    assert results["offline_baseline_batch_size"] in SIZES.batch_sizes
    assert "| offline" in bench.markdown_table(results, bench.machine_info(torch.device("cpu")))


def test_active_decode_bytes_counts_top_k_experts_only() -> None:
    config = {
        "hidden_size": 4,
        "vocab_size": 10,
        "num_hidden_layers": 2,
        "head_dim": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "first_k_dense_replace": 1,
        "intermediate_size": 8,
        "moe_intermediate_size": 3,
        "num_experts": 6,
        "num_experts_per_tok": 2,
        "num_shared_experts": 1,
    }
    attn = 4 * 2 * 4 + 4 * 4 + 2 * 2 + 2 * 4  # qkv, dense, q/k norms, two layer norms
    elems = 4 + 2 * attn + 3 * 4 * 8 + (2 + 1) * 3 * 4 * 3 + 4 + 10 * 4
    router = 6 * (4 + 1) * 4  # fp32 weight + bias
    assert bench.active_decode_bytes(config, torch.float32) == 4 * elems + router
    assert bench.active_decode_bytes(config, torch.bfloat16) == 2 * elems + router


def test_both_engines_run_past_eos(engines: bench.Engines, tmp_path: Path) -> None:
    """Same weights with a generated token declared eos: neither engine stops or avoids it."""
    prompts = bench.random_prompts([11, 23], seed=3, config=engines.config)
    before = bench.run_ours(engines, prompts, [10, 10])
    eos = before[0][2]
    folder = bench.ensure_bench_checkpoint(tmp_path / "eos", TINY, overrides={"eos_token_id": eos})
    with_eos = bench.load_engines(folder, "cpu")
    assert bench.run_ours(with_eos, prompts, [10, 10]) == before
    assert bench.run_baseline(with_eos, prompts, [10, 10], 2) == before
