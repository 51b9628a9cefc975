"""Queued batch items on one real `bailing worker` (demo Ling, real Redis, real Celery): results written
once, duplicates skipped, bad items failing alone, cancel, expiry, n = 2, the in-flight cap and
interactive jobs overtaking queued batch items. Plus `result_from_events` on hand-made events."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import redis

from pipelines.batches import (
    TASK_BATCH_ITEM,
    BatchItemJob,
    BatchRecord,
    BatchStatus,
    BatchStore,
    batch_key,
    batch_queue_name,
)
from pipelines.protocol import (
    ChoiceSummary,
    ErrorCode,
    Event,
    EventType,
    GenerateJob,
    Sampling,
    Usage,
    workers_key,
)
from tests.workers.helpers import WorkerProcess, new_id, read_events, send
from workers.batch import result_from_events

LIVE = "bailing:test:live-workers"  # heartbeat ZSET the claims check

NAME = "ling-batch"  # a queue pair of this module's own
SEQS, CAP = 8, 4  # --max-num-seqs 8 -> max_batch_inflight 4 by default
SHORT = Sampling(max_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def worker(redis_url, demo_ling, tmp_path_factory):
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    w = WorkerProcess(redis_url, demo_ling, log, NAME, "--max-num-seqs", str(SEQS))
    try:
        w.wait_registered()
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def store(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield BatchStore(client)
    client.close()


def create(store: BatchStore, jobs: list[GenerateJob], expires_at: float = 0.0) -> list[BatchItemJob]:
    """A queued batch of `jobs` (custom ids c0, c1, ...) stored directly; returns its items."""
    batch_id = new_id()
    record = BatchRecord(
        id=batch_id,
        model=NAME,
        status=BatchStatus.QUEUED,
        total=len(jobs),
        created_at=time.time(),
        expires_at=expires_at,
    )
    store.create(record, [f"c{i}" for i in range(len(jobs))])
    return [BatchItemJob(batch_id, i, f"c{i}", j) for i, j in enumerate(jobs)]


def job(sampling: Sampling = SHORT, prompt: str = "Batch item") -> GenerateJob:
    return GenerateJob(request_id=new_id(), model=NAME, prompt=prompt, sampling=sampling)


def send_items(sender, items: list[BatchItemJob]) -> None:
    for item in items:
        sender.send_task(TASK_BATCH_ITEM, args=[item.to_dict()], queue=batch_queue_name(NAME))


def wait_finished(store: BatchStore, batch_id: str, timeout: float = 120.0) -> BatchRecord:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        record = store.get(batch_id)
        if record is not None and record.finished:
            return record
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} not finished within {timeout} s: {store.get(batch_id)}")


def wait_log(w: WorkerProcess, needle: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if needle in w.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in the worker log within {timeout} s:\n{w.log()[-3000:]}")


# ---- through a real worker ---------------------------------------------------------------------
def test_twenty_items_complete_with_one_result_each(worker, sender, store):
    items = create(store, [job(prompt=f"Item number {i}") for i in range(20)])
    batch_id = items[0].batch_id
    send_items(sender, items)
    record = wait_finished(store, batch_id)
    assert record.status == BatchStatus.COMPLETED
    assert (record.total, record.completed, record.failed) == (20, 20, 0)
    results = store.results(batch_id, 0, 20)
    assert [r.index for r in results] == list(range(20))
    assert [r.custom_id for r in results] == [f"c{i}" for i in range(20)]
    for r in results:
        assert r.error is None and r.response["request_id"] == f"{batch_id}-{r.index}"
        assert r.response["model"] == NAME and len(r.response["choices"]) == 1
        assert r.response["text"] == r.response["choices"][0]["text"] != ""
        assert r.response["usage"]["completion_tokens"] == 12
    assert record.usage.completion_tokens == 20 * 12
    assert record.usage.prompt_tokens == sum(r.response["usage"]["prompt_tokens"] for r in results)
    assert store.redis.hlen(f"{batch_key(batch_id)}:running") == 0
    assert not store.redis.keys(f"bailing:out:batch-{batch_id}-*")  # streams deleted


def test_a_duplicate_of_an_item_a_live_worker_runs_is_deferred_not_dropped(worker, sender, store):
    """A second copy of an item arrives while another worker (still heartbeating) holds its claim, as
    after a visibility-timeout redelivery: the copy is re-sent for later, and once that worker stops
    heartbeating without a result (it died), the re-sent copy runs the item."""
    items = create(store, [job()])
    batch_id = items[0].batch_id
    live = workers_key(NAME)
    store.redis.zadd(live, {"other-worker": time.time() + 3600})  # heartbeats far into the future
    try:
        assert store.claim(batch_id, 0, "other-worker", live, 3.0) == "run"
        send_items(sender, items)
        wait_log(worker, f"batch {batch_id} item 0: running on a live worker; looking again later")
        assert store.get(batch_id).completed == 0
    finally:
        store.redis.zrem(live, "other-worker")  # it died with the item unfinished
    record = wait_finished(store, batch_id, timeout=60)
    assert (record.status, record.completed, record.failed) == (BatchStatus.COMPLETED, 1, 0)


def test_redelivered_duplicate_is_skipped(worker, sender, store):
    items = create(store, [job()])
    batch_id = items[0].batch_id
    send_items(sender, items)
    wait_finished(store, batch_id)
    before = store.results(batch_id, 0, 1)
    send_items(sender, items)  # the same message again, as after a redelivery
    wait_log(worker, f"batch {batch_id} item 0: already done, cancelled or gone")
    assert store.results(batch_id, 0, 1) == before
    record = store.get(batch_id)
    assert (record.completed, record.failed, record.status) == (1, 0, BatchStatus.COMPLETED)


def test_invalid_item_fails_alone(worker, sender, store):
    bad = Sampling(max_tokens=8, temperature=-1.0)
    items = create(store, [job(), job(sampling=bad), job()])
    send_items(sender, items)
    record = wait_finished(store, items[0].batch_id)
    assert (record.status, record.completed, record.failed) == (BatchStatus.COMPLETED, 2, 1)
    ok0, failed, ok2 = store.results(items[0].batch_id, 0, 3)
    assert ok0.response and ok2.response and failed.response is None
    assert failed.error["code"] == "INVALID_ARGUMENT" and "temperature" in failed.error["message"]


def test_malformed_item_gets_an_error_result(worker, sender, store):
    items = create(store, [job()])
    payload = {**items[0].to_dict(), "job": {"model": NAME, "bogus": 1}}
    sender.send_task(TASK_BATCH_ITEM, args=[payload], queue=batch_queue_name(NAME))
    record = wait_finished(store, items[0].batch_id)
    assert (record.completed, record.failed) == (0, 1)
    (result,) = store.results(items[0].batch_id, 0, 1)
    assert result.custom_id == "c0" and result.error["code"] == "INVALID_ARGUMENT"


def test_cancelled_batch_items_are_skipped(worker, sender, store):
    items = create(store, [job() for _ in range(5)])
    batch_id = items[0].batch_id
    assert store.stop(batch_id) == 5
    send_items(sender, items)
    for i in range(5):
        wait_log(worker, f"batch {batch_id} item {i}: already done, cancelled or gone")
    record = store.get(batch_id)
    assert (record.status, record.completed, record.failed) == (BatchStatus.CANCELLED, 0, 5)
    assert {r.error["code"] for r in store.results(batch_id, 0, 5)} == {"CANCELLED"}


def test_item_released_for_a_retry_during_a_cancel_still_ends(worker, sender, store):
    """Item 0 is claimed (running) when the batch is cancelled, then released for a retry: its
    re-sent message finds the batch cancelling and ends it, so the batch still reaches cancelled."""
    items = create(store, [job(), job()])
    batch_id = items[0].batch_id
    assert store.claim(batch_id, 0, "elsewhere", LIVE, 3.0) == "run"
    assert store.stop(batch_id) == 1  # item 1 ended; item 0 is running
    store.release(batch_id, 0)  # what a transient failure does before re-sending the item
    send_items(sender, [replace(items[0], attempt=1)])
    record = wait_finished(store, batch_id)
    assert (record.status, record.completed, record.failed) == (BatchStatus.CANCELLED, 0, 2)
    assert [r.error["code"] for r in store.results(batch_id, 0, 2)] == ["CANCELLED", "CANCELLED"]


def test_items_past_the_completion_window_expire(worker, sender, store):
    items = create(store, [job() for _ in range(4)], expires_at=time.time() - 1)
    batch_id = items[0].batch_id
    send_items(sender, items)
    record = wait_finished(store, batch_id)
    assert (record.status, record.completed, record.failed) == (BatchStatus.EXPIRED, 0, 4)
    for r in store.results(batch_id, 0, 4):
        assert r.error == {"code": "DEADLINE_EXCEEDED", "message": "the batch's completion window passed"}


def test_n2_item_has_two_choices(worker, sender, store):
    items = create(store, [job(sampling=Sampling(max_tokens=10, temperature=1.0, seed=7, n=2))])
    send_items(sender, items)
    record = wait_finished(store, items[0].batch_id)
    assert record.completed == 1
    (result,) = store.results(items[0].batch_id, 0, 1)
    response = result.response
    assert [c["index"] for c in response["choices"]] == [0, 1]
    assert response["text"] == response["choices"][0]["text"]
    assert response["finish_reason"] == response["choices"][0]["finish_reason"] == "length"
    assert sum(c["completion_tokens"] for c in response["choices"]) == response["usage"]["completion_tokens"]
    assert response["usage"]["completion_tokens"] == 20


def test_a_batch_item_answers_exactly_what_the_same_interactive_request_streams(worker, sender, store, rds):
    """Batch items are run final-only (no per-step events); their text and usage still equal a
    streamed interactive run of the same request, for one and for n = 2 choices."""
    for sampling in (SHORT, Sampling(max_tokens=10, temperature=1.0, seed=3, n=2)):
        items = create(store, [job(sampling=sampling, prompt="Same answer either way")])
        send_items(sender, items)
        interactive = job(sampling=sampling, prompt="Same answer either way")
        events = read_events(rds, send(sender, interactive))
        record = wait_finished(store, items[0].batch_id)
        assert record.completed == 1
        (result,) = store.results(items[0].batch_id, 0, 1)
        response = result.response
        for choice in response["choices"]:
            streamed = "".join(
                e.text for e in events if e.type is EventType.DELTA and e.index == choice["index"]
            )
            assert choice["text"] == streamed != ""
        assert response["usage"]["completion_tokens"] == events[-1].usage.completion_tokens


def test_interactive_job_overtakes_queued_batch_items(worker, sender, store, rds):
    long = Sampling(max_tokens=96, temperature=0.0, ignore_eos=True)
    items = create(store, [job(sampling=long, prompt=f"Long item {i}") for i in range(40)])
    batch_id = items[0].batch_id
    send_items(sender, items)
    peak = 0
    while store.get(batch_id).status == BatchStatus.QUEUED:  # the worker has started on the batch
        time.sleep(0.01)
    interactive = GenerateJob(request_id=new_id(), model=NAME, prompt="Hi", sampling=SHORT)
    send(sender, interactive)
    events = read_events(rds, interactive.request_id, timeout=60)
    done_by_then = store.get(batch_id).completed
    assert events[-1].type == EventType.DONE and events[0].worker_id == worker.worker_id
    assert done_by_then < 40 // 2, f"{done_by_then} of 40 batch items finished before the interactive job"
    end = time.monotonic() + 180
    while not (record := store.get(batch_id)).finished and time.monotonic() < end:
        peak = max(peak, store.redis.hlen(f"{batch_key(batch_id)}:running"))  # claimed = running
        time.sleep(0.02)
    assert (record.status, record.completed, record.failed) == (BatchStatus.COMPLETED, 40, 0)
    assert 1 <= peak <= CAP  # never more batch items in flight than the cap


# ---- result_from_events (pure) -------------------------------------------------------------------
def ev(seq: int, type_: EventType, **kw) -> Event:
    return Event(seq=seq, type=type_, **kw)


def test_result_from_a_single_choice_done():
    usage = Usage(
        prompt_tokens=5, completion_tokens=3, reasoning_tokens=2, cached_prompt_tokens=1, forwards=3
    )
    events = [
        ev(0, EventType.STARTED, worker_id="w"),
        ev(1, EventType.DELTA, reasoning_text="hmm "),
        ev(2, EventType.DELTA, reasoning_text="ok", text="Hel"),
        ev(3, EventType.DELTA, text="lo"),
        ev(4, EventType.DONE, finish_reason="length", usage=usage),
    ]
    result, got = result_from_events(events, "b1", 3, "x", "ling")
    assert got == usage and result.error is None and (result.index, result.custom_id) == (3, "x")
    assert result.response == {
        "request_id": "b1-3",
        "model": "ling",
        "text": "Hello",
        "reasoning_text": "hmm ok",
        "finish_reason": "length",
        "tool_calls": [],
        "logprobs": [],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 3,
            "reasoning_tokens": 2,
            "cached_prompt_tokens": 1,
            "forwards": 3,
            "tokens_per_forward": 1.0,
        },
        "choices": [
            {
                "index": 0,
                "text": "Hello",
                "reasoning_text": "hmm ok",
                "finish_reason": "length",
                "completion_tokens": 3,
                "reasoning_tokens": 2,
                "tool_calls": [],
                "logprobs": [],
            }
        ],
    }


def test_result_from_an_n2_done_uses_the_choice_summaries():
    choices = (ChoiceSummary(0, "stop", 2, 0), ChoiceSummary(1, "length", 4, 1))
    events = [
        ev(0, EventType.STARTED),
        ev(1, EventType.DELTA, text="a", index=0),
        ev(2, EventType.DELTA, text="B", index=1),
        ev(3, EventType.DELTA, text="b", index=0, reasoning_text="r0"),
        ev(4, EventType.DELTA, text="C", index=1),
        ev(5, EventType.DONE, finish_reason="stop", usage=Usage(7, 6, 1, 0), choices=choices),
    ]
    result, usage = result_from_events(events, "b", 0, "c", "m")
    r = result.response
    assert usage == Usage(7, 6, 1, 0)
    assert (r["text"], r["reasoning_text"], r["finish_reason"]) == ("ab", "r0", "stop")
    assert [(c["index"], c["text"], c["finish_reason"]) for c in r["choices"]] == [
        (0, "ab", "stop"),
        (1, "BC", "length"),
    ]
    assert [(c["completion_tokens"], c["reasoning_tokens"]) for c in r["choices"]] == [(2, 0), (4, 1)]


@pytest.mark.parametrize(
    ("terminal", "code", "message"),
    [
        (
            ev(1, EventType.ERROR, error_code="INVALID_ARGUMENT", message="bad\ntrace"),
            "INVALID_ARGUMENT",
            "bad",
        ),
        (
            ev(1, EventType.CANCELLED, error_code="DEADLINE_EXCEEDED", message="late"),
            "DEADLINE_EXCEEDED",
            "late",
        ),
        (ev(1, EventType.CANCELLED), "CANCELLED", "cancelled"),
    ],
)
def test_result_from_an_error_terminal(terminal, code, message):
    events = [ev(0, EventType.STARTED), ev(1, EventType.DELTA, text="partial"), terminal]
    result, usage = result_from_events(events, "b", 1, "c", "m")
    assert result.response is None and result.error == {"code": code, "message": message}
    assert usage == Usage()


def test_result_without_a_terminal_event_is_internal():
    result, _ = result_from_events([ev(0, EventType.STARTED)], "b", 0, "c", "m")
    assert result.error["code"] == ErrorCode.INTERNAL
