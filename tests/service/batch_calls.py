"""Batch helpers shared by the service tests: a JSONL of text items, waiting for a batch, its results."""

from __future__ import annotations

import json
import time

from gateway.api import pb


def jsonl(n: int, max_tokens: int = 2, prefix: str = "item") -> bytes:
    lines = []
    for i in range(n):
        body = {
            "prompt": f"Item {i}: the quick brown fox",
            "sampling": {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True},
        }
        lines.append(json.dumps({"custom_id": f"{prefix}-{i}", "body": body}))
    return ("\n".join(lines) + "\n").encode()


def wait_batch(stub, batch_id: str, timeout: float = 600.0) -> pb.Batch:
    terminal = {pb.COMPLETED, pb.CANCELLED, pb.EXPIRED, pb.FAILED}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = stub.GetBatch(pb.GetBatchRequest(id=batch_id), timeout=30)
        if batch.status in terminal:
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} not finished in {timeout} s: {batch}")


def results(stub, batch_id: str) -> list[pb.BatchResult]:
    return list(stub.GetBatchResults(pb.GetBatchResultsRequest(id=batch_id), timeout=120))


def check_exactly_once(out: list[pb.BatchResult], n: int, prefix: str = "item") -> None:
    assert [r.index for r in out] == list(range(n))
    assert [r.custom_id for r in out] == [f"{prefix}-{i}" for i in range(n)]
    assert all(r.WhichOneof("outcome") == "response" for r in out), [r for r in out if r.error.code][:3]
    assert all(r.response.usage.completion_tokens == 2 for r in out)
