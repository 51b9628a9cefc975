"""The chaos run's batches: keep one running at all times, and check each index is recorded once.

Checks read the results through the gateway (`GetBatchResults`, what a client sees) as each batch
completes; while the gateway or Redis is down a check waits for it. An index seen twice in a batch's
results is a duplicate; at the end, an index without a successful result (missing, an error, or a
batch that never completes) is lost.
"""

from __future__ import annotations

import json
import time
from typing import Any


def jsonl(n: int, tag: str) -> bytes:
    lines = []
    for i in range(n):
        sampling = {"max_tokens": 2, "temperature": 0, "ignore_eos": True}
        body = {"prompt": f"{tag} item {i}", "sampling": sampling}
        lines.append(json.dumps({"custom_id": f"{tag}-{i}", "body": body}))
    return ("\n".join(lines) + "\n").encode()


class BatchWatch:
    def __init__(self, stack: Any, items: int) -> None:
        self.stack, self.items = stack, items
        self.ids: list[str] = []
        self.done: set[str] = set()

    def _call(self, fn: Any, timeout: float = 300.0) -> Any:
        """`fn(client)` on a fresh client, retried while the gateway or Redis is restarting."""
        from bailing.client import BailingClientError, Client

        deadline = time.monotonic() + timeout
        while True:
            try:
                with Client(self.stack.address) as client:
                    return fn(client)
            except BailingClientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def submit(self) -> None:
        tag = f"b{len(self.ids)}"
        batch = self._call(lambda c: c.create_batch("ling", jsonl=jsonl(self.items, tag), timeout=120))
        self.ids.append(batch.id)

    def total_items(self) -> int:
        return len(self.ids) * self.items

    def _results(self, batch_id: str) -> list[Any]:
        return self._call(lambda c: list(c.batch_results(batch_id, timeout=120)))

    def check_round(self) -> list[str]:
        """Problems seen so far (duplicates); submits a new batch once the newest one completed."""
        problems = []
        for batch_id in self.ids:
            if batch_id in self.done:
                continue
            status = self._call(lambda c, b=batch_id: c.get_batch(b, timeout=30)).status
            if status in ("completed", "cancelled", "expired", "failed"):
                self.done.add(batch_id)
            indexes = [r.index for r in self._results(batch_id)] if batch_id in self.done else []
            seen: set[int] = set()
            for i in indexes:
                if i in seen:
                    problems.append(f"batch {batch_id}: item {i} recorded twice")
                seen.add(i)
        if self.ids[-1] in self.done:
            self.submit()
        return problems

    def finish(self, timeout: float) -> tuple[int, int]:
        """Wait for every batch to complete; (items lost, items duplicated) over all of them."""
        deadline = time.monotonic() + timeout
        lost = duplicated = 0
        for batch_id in self.ids:
            while time.monotonic() < deadline:
                status = self._call(lambda c, b=batch_id: c.get_batch(b, timeout=30)).status
                if status in ("completed", "cancelled", "expired", "failed"):
                    break
                time.sleep(1.0)
            results = self._results(batch_id)
            indexes = [r.index for r in results if r.error is None]
            lost += self.items - len(set(indexes))
            duplicated += len(indexes) - len(set(indexes))
        return lost, duplicated
