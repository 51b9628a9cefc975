"""Smoke test of bench/batch.py's pure parts: its JSONL is a valid batch for the gateway, and the
table reports the ratio against the 2x target. (The full run needs a service and minutes.)"""

from __future__ import annotations

from bench import batch
from gateway.api import pb
from gateway.batch_convert import parse_batch
from gateway.config import GatewayConfig


def test_the_benchmark_batch_passes_the_gateway_validation():
    body = batch._batch_jsonl(["a b c", "d e"], new_tokens=4)
    req = pb.CreateBatchRequest(model="ling", jsonl=body)
    cfg = GatewayConfig(redis_url="redis://127.0.0.1:6379/0", models=("ling",))
    specs = parse_batch(req, cfg, None, batch_id="b", submitted_at=0.0)
    assert len(specs) == 2 and not any(s.error for s in specs)


def test_table_states_the_ratio_and_the_target():
    r = {
        "sizes": {"items": 10, "prompt_tokens": 8, "new_tokens": 4},
        "idle_median_ttft_ms": 100.0,
        "loaded_median_ttft_ms": 250.0,
        "ttft_ratio": 2.5,
        "loaded_probes": 3,
        "batch": {"items_per_s": 2.0, "tokens_per_s": 8.0},
        "interactive": {"items_per_s": 4.0, "tokens_per_s": 16.0},
    }
    table = batch.markdown_table(r, {"cpu": "x", "cores": 2, "torch": "t"})
    assert "2.50x idle" in table and "<= 2x idle" in table and "0.50x" in table
