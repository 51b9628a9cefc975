"""Test-only logits processors (loaded by a worker with `--logits-processor`) that make requests fail
with INTERNAL, the transient error a batch item is retried for.

`make_flaky`: the first FLAKY_FAILURES requests this worker process runs fail on their first token,
later ones run normally. `make_broken`: every request fails.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

FLAKY_FAILURES = 2
_started = itertools.count()
_lock = threading.Lock()


class _Fails:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def clone(self) -> _Fails:
        return _Fails(self.fail)

    def __call__(self, output_ids: list[int], logits: Any) -> Any:
        if self.fail:
            raise RuntimeError("injected failure (tests.service.flaky_processor)")
        return logits


def make_flaky(tokenizer: Any) -> _Fails:
    with _lock:
        return _Fails(next(_started) < FLAKY_FAILURES)


def make_broken(tokenizer: Any) -> _Fails:
    return _Fails(True)
