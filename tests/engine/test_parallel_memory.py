"""Sharded loading: each rank reads only its slices, so no rank ever holds the whole model. On a
~720 MB checkpoint split over 2 ranks, each rank's peak resident memory while loading stays within
1/2 of the model's bytes + 15%."""

from __future__ import annotations

import json

import pytest
import torch

from bailing.demo.writer import ling_tensor_layout, write_safetensors_checkpoint
from engine.parallel.launch import run_local_group
from tests.conftest import GOLDEN_LING
from tests.engine.parallel_cases import load_rss


@pytest.mark.slow
def test_each_rank_peaks_under_its_share_of_the_model_plus_15_percent(tmp_path):
    config = json.loads((GOLDEN_LING / "tiny-bailing" / "config.json").read_text())
    config.update(
        vocab_size=32768, hidden_size=1024, intermediate_size=4096, num_hidden_layers=3,
        num_attention_heads=16, num_key_value_heads=4, head_dim=64, num_experts=32,
        moe_intermediate_size=512, moe_shared_expert_intermediate_size=512, first_k_dense_replace=1,
        num_nextn_predict_layers=0, n_group=4, topk_group=2,
    )  # fmt: skip
    state = {spec.key: torch.zeros(spec.shape) for spec in ling_tensor_layout(config)}
    model_bytes = sum(t.numel() * 4 for t in state.values())
    assert 0.6e9 < model_bytes < 0.8e9, model_bytes
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_safetensors_checkpoint(tmp_path, state, dtype=torch.float32, max_shard_bytes=200_000_000)
    del state
    for rank, m in enumerate(run_local_group(load_rss, 2, str(tmp_path), threads=1)):
        share = model_bytes / 2
        assert m["held"] < share * 1.02, (rank, m)  # replicated: norms and routers only
        assert m["peak"] - m["base"] <= share * 1.15, (rank, (m["peak"] - m["base"]) / share, m)
