"""BatchRunner: a worker runs one queued batch item (Celery task `TASK_BATCH_ITEM`) and records its result.

Flow: payload (from the `BatchFeeder`, which holds one of the `max_batch_inflight` slots while the
item runs) -> `BatchItemJob` -> `BatchStore.claim`
('skip': done, cancelled or gone; 'expired': `BatchStore.stop(expire=True)` gives every item not
started a DEADLINE_EXCEEDED result; 'busy': a live worker, maybe this one, runs it now - a duplicate
delivery after the visibility timeout - so it is re-sent to be looked at again in BUSY_RECHECK_S
(never dropped: should that worker die, the re-sent copy runs it); 'run') -> `WorkerRuntime.run` on the stream
`batch-{id}-{index}-{attempt}` at priority + BATCH_PRIORITY_OFFSET, no deadline -> XRANGE ->
`result_from_events` -> `BatchStore.write_result` (once) or, for UNAVAILABLE / INTERNAL, a re-send
with attempt + 1 (at most MAX_ITEM_RETRIES times). The stream is deleted afterwards. That last step
("settling" the item: a result, a retry or a deferral written to Redis) is retried while Redis is
unreachable, and the feeder acks the message only once it succeeded, so a Redis restart mid-item
loses nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import kombu.exceptions
import redis

from pipelines.batches import (
    TASK_BATCH_ITEM,
    BatchItemJob,
    BatchStatus,
    BatchStore,
    ItemResult,
    batch_key,
    batch_queue_name,
)
from pipelines.protocol import (
    WORKER_DEAD_AFTER_S,
    ErrorCode,
    Event,
    EventType,
    TokenLogprob,
    TopLogprob,
    Usage,
    stream_key,
    workers_key,
)
from workers.batch_media import image_result, speech_result

if TYPE_CHECKING:
    from celery import Celery

    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

BATCH_PRIORITY_OFFSET = 100  # engine priority: lower runs first; interactive jobs are ~0
MAX_ITEM_RETRIES = 3  # re-runs of an item that failed with a transient error
TRANSIENT_CODES = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL})
_STOP_ERRORS = {  # what BatchStore.stop writes for the items it ends
    BatchStatus.CANCELLING: (ErrorCode.CANCELLED, "the batch was cancelled"),
    BatchStatus.EXPIRING: (ErrorCode.DEADLINE_EXCEEDED, "the batch's completion window passed"),
}
RETRY_BACKOFF_S = 1.0  # a transient failure is retried after 1, 2, 4 s
BUSY_RECHECK_S = WORKER_DEAD_AFTER_S + 1.0  # a duplicate of a running item looks again after this long
SETTLE_PATIENCE_S = 600.0  # how long a finished item waits for Redis to come back to be recorded
BACKEND_DOWN = (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError)


class BatchRunner:
    """Runs batch items on a `WorkerRuntime` (the `BatchFeeder` bounds how many at once)."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self.store = BatchStore(runtime.redis)
        self.worker_id = runtime.config.worker_id
        self._workers = workers_key(runtime.config.name)
        self._active: set[tuple[str, int]] = set()  # items running on this worker now
        self._active_lock = threading.Lock()

    def run_payload(self, payload: Any, app: Celery) -> bool:
        """Decode, claim, run, then settle: record the result, re-send a retry or a deferral (`app`).

        True once the item is settled. Settling is retried while Redis is unreachable (a restart), for
        up to SETTLE_PATIENCE_S: acking an item whose result or retry was never written would lose it.
        False when it could not be settled: the caller must leave the message unacked (the sweeper or
        the visibility timeout brings it back)."""
        item = self._decode(payload)
        if item is None:
            return True
        try:
            settle = self._run_item(item, app)
        except Exception:
            log.exception("batch %s item %d: failed; it will be retried", item.batch_id, item.index)
            failure = _error(item, ErrorCode.INTERNAL, "internal error in the worker")
            settle = partial(self._retry_or_fail, item, app, failure)
        return settle_patiently(item, settle)

    def _decode(self, payload: Any) -> BatchItemJob | None:
        try:
            if not isinstance(payload, dict):
                raise ValueError("the task takes exactly one argument, the item object")
            item = BatchItemJob.from_dict(payload)
            _check_item(item)
            return item
        except Exception as exc:
            batch_id = payload.get("batch_id") if isinstance(payload, dict) else None
            index = payload.get("index") if isinstance(payload, dict) else None
            log.warning("batch %s item %s: malformed payload: %s", batch_id, index, exc)
            known = isinstance(batch_id, str) and batch_id and _is_index(index)
            if known and self.runtime.redis.exists(batch_key(batch_id)):
                custom_id = payload.get("custom_id")
                custom_id = custom_id if isinstance(custom_id, str) else ""
                error = {"code": ErrorCode.INVALID_ARGUMENT.value, "message": f"malformed item: {exc}"}
                self._write(batch_id, ItemResult(index, custom_id, error=error), None)
            return None

    def _run_item(self, item: BatchItemJob, app: Celery) -> Callable[[], None]:
        """Run the item if it is this worker's to run; returns what settles it."""
        key = (item.batch_id, item.index)
        with self._active_lock:
            mine = key in self._active
            self._active.add(key)
        if mine:  # a duplicate delivery of an item this worker is running
            return partial(self._defer, item, app)
        try:
            return self._claim_and_execute(item, app)
        finally:
            with self._active_lock:
                self._active.discard(key)

    def _claim_and_execute(self, item: BatchItemJob, app: Celery) -> Callable[[], None]:
        verdict = self.store.claim(
            item.batch_id, item.index, self.worker_id, self._workers, WORKER_DEAD_AFTER_S
        )
        if verdict == "skip":
            return partial(self._settle_skipped, item)
        if verdict == "busy":
            return partial(self._defer, item, app)
        if verdict == "expired":  # expire the whole batch: this item and every other not started
            return partial(self._expire, item)
        result, usage = self._execute(item)
        return partial(self._record, item, app, result, usage)

    def _record(self, item: BatchItemJob, app: Celery, result: ItemResult, usage: Usage) -> None:
        if result.error is not None and result.error.get("code") in TRANSIENT_CODES:
            self._retry_or_fail(item, app, result)
        else:
            self._write(item.batch_id, result, usage)

    def _expire(self, item: BatchItemJob) -> None:
        ended = self.store.stop(item.batch_id, expire=True)  # results: DEADLINE_EXCEEDED
        log.info("batch %s: completion window passed; %d items expired", item.batch_id, ended)

    def _settle_skipped(self, item: BatchItemJob) -> None:
        """Nothing to run; but an item released for a retry just as the batch was cancelled (or expired)
        has no result and no claim, so the stop passed it by: end it as the stop would have."""
        record = self.store.get(item.batch_id)
        stop = _STOP_ERRORS.get(record.status) if record is not None else None
        base, index = batch_key(item.batch_id), item.index
        if stop is None or self.runtime.redis.hexists(f"{base}:results", index):
            log.info("batch %s item %d: already done, cancelled or gone", item.batch_id, index)
        elif not self.runtime.redis.hexists(f"{base}:running", index):
            log.info("batch %s item %d: ended by the batch's %s", item.batch_id, index, record.status)
            self._write(item.batch_id, _error(item, *stop), None)

    def _execute(self, item: BatchItemJob) -> tuple[ItemResult, Usage]:
        """Run the item's request from scratch (this worker holds its claim)."""
        rid = f"batch-{item.batch_id}-{item.index}-{item.attempt}"
        key, client = stream_key(rid), self.runtime.redis
        client.delete(key)  # a redelivered message after a worker died re-runs from scratch
        p = item.job.priority
        priority = p + BATCH_PRIORITY_OFFSET if isinstance(p, int) and not isinstance(p, bool) else p
        job = replace(item.job, request_id=rid, priority=priority, deadline=None)
        self.runtime.run(job, final_only=True)  # nobody streams a batch item: one write at the end
        events = [Event.decode(fields) for _, fields in client.xrange(key)]
        client.delete(key)
        result, usage = result_from_events(events, item.batch_id, item.index, item.custom_id, item.job.model)
        if job.task == "image" and result.response is not None:  # the images, not a text answer
            result = image_result(events, result, client)
            usage = Usage(prompt_tokens=usage.prompt_tokens)  # steps are not token forwards
        elif job.task == "speech" and result.response is not None:  # the clip, not a text answer
            result = speech_result(events, result, client)
            usage = Usage(prompt_tokens=usage.prompt_tokens)  # latent patches are not text tokens
        return result, usage

    def _defer(self, item: BatchItemJob, app: Celery) -> None:
        """Another copy of this item runs on a live worker: look again later rather than drop it."""
        log.info("batch %s item %d: running on a live worker; looking again later", item.batch_id, item.index)
        self._send(app, item, BUSY_RECHECK_S)

    def _retry_or_fail(self, item: BatchItemJob, app: Celery, result: ItemResult) -> None:
        """A transient failure: re-send with attempt + 1, or record it once the retries are spent."""
        if item.attempt >= MAX_ITEM_RETRIES:
            self._write(item.batch_id, result, None)
            return
        self.store.release(item.batch_id, item.index)
        attempt = item.attempt + 1
        log.info("batch %s item %d: %s; retry %d", item.batch_id, item.index, result.error, attempt)
        self._send(app, replace(item, attempt=item.attempt + 1), RETRY_BACKOFF_S * 2**item.attempt)

    def _send(self, app: Celery, item: BatchItemJob, countdown: float) -> None:
        queue = batch_queue_name(item.job.model)
        app.send_task(TASK_BATCH_ITEM, args=[item.to_dict()], queue=queue, countdown=countdown)

    def _write(self, batch_id: str, result: ItemResult, usage: Usage | None) -> None:
        if not self.store.write_result(batch_id, result, usage):
            log.info("batch %s item %d already has a result; this one is dropped", batch_id, result.index)


def settle_patiently(item: BatchItemJob, settle: Callable[[], None]) -> bool:
    """`settle()`, again while Redis is unreachable (up to SETTLE_PATIENCE_S); True once it succeeded."""
    deadline, delay = time.monotonic() + SETTLE_PATIENCE_S, 0.5
    while True:
        try:
            settle()
            return True
        except BACKEND_DOWN as exc:
            if time.monotonic() + delay > deadline:
                log.error("batch %s item %d: Redis unreachable for %.0f s; left unacked: %s",
                          item.batch_id, item.index, SETTLE_PATIENCE_S, exc)  # fmt: skip
                return False
            log.warning("batch %s item %d: Redis unreachable (%s); settling it again in %.1f s",
                        item.batch_id, item.index, exc, delay)  # fmt: skip
            time.sleep(delay)
            delay = min(2 * delay, 5.0)
        except Exception:
            log.exception("batch %s item %d: cannot settle it; left unacked", item.batch_id, item.index)
            return False


# ---- events -> result (pure) ------------------------------------------------------------------------
def result_from_events(
    events: list[Event], batch_id: str, index: int, custom_id: str, model: str
) -> tuple[ItemResult, Usage]:
    """An item's stream -> its result (a GenerateResponse-shaped dict, as the gateway's ResponseBuilder
    builds it, or an error) and the usage to add to the batch (zero for an error)."""
    last = events[-1] if events and events[-1].terminal else None
    if last is None:
        error = {"code": ErrorCode.INTERNAL.value, "message": "the request ended without a terminal event"}
        return ItemResult(index, custom_id, error=error), Usage()
    if last.type is not EventType.DONE:
        code = last.error_code or ErrorCode.CANCELLED.value
        text = (last.message or "").strip()
        message = text.splitlines()[0] if text else code.lower()
        return ItemResult(index, custom_id, error={"code": code, "message": message}), Usage()
    usage = last.usage or Usage()
    choices = _choices(events, last, usage)
    first = choices[0]
    response = {
        "request_id": f"{batch_id}-{index}",
        "model": model,
        "text": first["text"],
        "reasoning_text": first["reasoning_text"],
        "finish_reason": first["finish_reason"],
        "tool_calls": first["tool_calls"],
        "logprobs": first["logprobs"],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "cached_prompt_tokens": usage.cached_prompt_tokens,
            "forwards": usage.forwards,
            "tokens_per_forward": usage.tokens_per_forward,
        },
        "choices": choices,
    }
    return ItemResult(index, custom_id, response=response), usage


def _choices(events: list[Event], done: Event, usage: Usage) -> list[dict[str, Any]]:
    """One choice per DONE `choices` summary (n > 1), else a single choice with the request's tokens."""
    texts: dict[int, list[str]] = {}
    reasoning: dict[int, list[str]] = {}
    calls: dict[int, list[dict[str, Any]]] = {}
    logprobs: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if e.text:
            texts.setdefault(e.index, []).append(e.text)
        if e.reasoning_text:
            reasoning.setdefault(e.index, []).append(e.reasoning_text)
        for c in e.tool_calls or ():
            calls.setdefault(e.index, []).append({"type": "function", **asdict(c)})
        if e.logprobs:
            logprobs.setdefault(e.index, []).extend(_logprob_json(t) for t in e.logprobs)

    def choice(i: int, finish: str, completion: int, reasoning_tokens: int) -> dict[str, Any]:
        return {
            "index": i,
            "text": "".join(texts.get(i, ())),
            "reasoning_text": "".join(reasoning.get(i, ())),
            "finish_reason": finish or "stop",
            "completion_tokens": completion,
            "reasoning_tokens": reasoning_tokens,
            "tool_calls": calls.get(i, []),
            "logprobs": logprobs.get(i, []),
        }

    if done.choices:
        return [
            choice(c.index, c.finish_reason, c.completion_tokens, c.reasoning_tokens) for c in done.choices
        ]
    return [choice(0, done.finish_reason, usage.completion_tokens, usage.reasoning_tokens)]


def _logprob_json(t: TokenLogprob | TopLogprob) -> dict[str, Any]:
    """A token's logprob as the JSON of the proto's TokenLogprob / TopLogprob (bytes in base64)."""
    raw = base64.b64encode(t.bytes).decode()
    lp = t.logprob if math.isfinite(t.logprob) else json.dumps(t.logprob)  # proto JSON: "-Infinity"
    out = {"token": t.token, "bytes": raw, "logprob": lp, "token_id": t.token_id}
    if isinstance(t, TokenLogprob):
        out["top"] = [_logprob_json(a) for a in t.top]
    return out


def _error(item: BatchItemJob, code: ErrorCode, message: str) -> ItemResult:
    return ItemResult(item.index, item.custom_id, error={"code": code.value, "message": message})


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_item(item: BatchItemJob) -> None:
    if not isinstance(item.batch_id, str) or not item.batch_id:
        raise ValueError("batch_id must be a non-empty string")
    if not _is_index(item.index):
        raise ValueError(f"index must be an integer >= 0, got {item.index!r}")
    if not isinstance(item.custom_id, str):
        raise ValueError(f"custom_id must be a string, got {item.custom_id!r}")
    if not _is_index(item.attempt):
        raise ValueError(f"attempt must be an integer >= 0, got {item.attempt!r}")
    if not isinstance(item.job.model, str) or not item.job.model:
        raise ValueError("job.model must be a non-empty string")
