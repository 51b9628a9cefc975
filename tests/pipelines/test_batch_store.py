"""BatchStore on a real Redis: results written once, counts and status, claims, cancel and expiry."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from pipelines.batches import (
    BatchItemJob,
    BatchRecord,
    BatchStatus,
    BatchStore,
    ItemResult,
)
from pipelines.protocol import GenerateJob, Sampling, Usage

LIVE = "bailing:test:live-workers"  # heartbeat ZSET the claims check


@pytest.fixture()
def store(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield BatchStore(client, result_ttl_s=600)
    client.close()


def new_batch(store: BatchStore, n: int, expires_at: float = 0.0) -> str:
    batch_id = f"batch_{uuid.uuid4().hex}"
    record = BatchRecord(
        batch_id, "ling", BatchStatus.QUEUED, n, created_at=time.time(), expires_at=expires_at
    )
    store.create(record, [f"c{i}" for i in range(n)])
    return batch_id


def ok(i: int) -> ItemResult:
    return ItemResult(i, f"c{i}", response={"text": f"answer {i}"})


def test_results_are_written_once_and_finish_the_batch(store):
    batch_id = new_batch(store, 3)
    assert store.claim(batch_id, 0, "w1", LIVE, 3.0) == "run"
    assert store.get(batch_id).status is BatchStatus.RUNNING and store.get(batch_id).started_at > 0
    assert store.write_result(batch_id, ok(0), Usage(5, 7, 2, 1, forwards=3))
    assert not store.write_result(batch_id, ItemResult(0, "c0", error={"code": "X", "message": "dup"}))
    assert store.claim(batch_id, 0, "w2", LIVE, 3.0) == "skip"  # done: a redelivery is dropped
    invalid = ItemResult(1, "c1", error={"code": "INVALID_ARGUMENT", "message": "m"})
    assert store.write_result(batch_id, invalid)
    record = store.get(batch_id)
    assert (record.completed, record.failed, record.status) == (1, 1, BatchStatus.RUNNING)
    assert store.write_result(batch_id, ok(2), Usage(1, 1, 0, 0, forwards=1))
    record = store.get(batch_id)
    assert record.status is BatchStatus.COMPLETED and record.finished_at >= record.started_at
    assert record.usage == Usage(6, 8, 2, 1, forwards=4)  # the failed item adds nothing
    results = store.results(batch_id, 0, 3)
    assert [r.index for r in results] == [0, 1, 2] and results[0].response == {"text": "answer 0"}
    assert results[1].error["code"] == "INVALID_ARGUMENT"


def test_an_item_claimed_by_a_live_worker_is_busy_until_that_worker_stops_heartbeating(store):
    batch_id = new_batch(store, 2)
    live = f"{LIVE}:{uuid.uuid4().hex[:6]}"
    store.redis.zadd(live, {"w1": time.time()})
    assert store.claim(batch_id, 0, "w1", live, 3.0) == "run"
    assert store.claim(batch_id, 0, "w2", live, 3.0) == "busy"  # a duplicate delivery while w1 runs it
    store.redis.zadd(live, {"w1": time.time() - 5})  # w1 died: its claim no longer counts
    assert store.claim(batch_id, 0, "w2", live, 3.0) == "run"
    assert store.redis.hget(f"bailing:batch:{batch_id}:running", 0) == b"w2"
    assert store.claim(batch_id, 1, "w2", live, 3.0) == "run"  # unclaimed items are not affected


def test_cancel_ends_unclaimed_items_and_waits_for_running_ones(store):
    batch_id = new_batch(store, 4)
    assert store.claim(batch_id, 1, "w1", LIVE, 3.0) == "run"
    assert store.write_result(batch_id, ok(0))
    assert store.stop(batch_id) == 2  # items 2 and 3; item 1 is running
    assert store.get(batch_id).status is BatchStatus.CANCELLING
    assert store.claim(batch_id, 2, "w1", LIVE, 3.0) == "skip"
    assert store.write_result(batch_id, ok(1))  # the running item still reports
    record = store.get(batch_id)
    assert record.status is BatchStatus.CANCELLED and (record.completed, record.failed) == (2, 2)
    assert [r.error["code"] for r in store.results(batch_id, 2, 2)] == ["CANCELLED", "CANCELLED"]
    assert store.stop(batch_id) == -1  # already over


def test_expiry_on_claim_and_when_looked_at(store):
    batch_id = new_batch(store, 2, expires_at=time.time() - 1)
    assert store.claim(batch_id, 0, "w1", LIVE, 3.0) == "expired"
    record = store.expire_if_due(store.get(batch_id))
    assert record.status is BatchStatus.EXPIRED and record.failed == 2
    assert {r.error["code"] for r in store.results(batch_id, 0, 2)} == {"DEADLINE_EXCEEDED"}


def test_list_is_newest_first_and_drops_vanished_batches(store):
    a = new_batch(store, 1)
    b = new_batch(store, 1)
    ids = [r.id for r in store.list(1000)]
    assert ids.index(b) < ids.index(a)
    store.redis.delete(f"bailing:batch:{a}")
    assert a not in [r.id for r in store.list(1000)]


def test_item_payload_round_trips():
    job = GenerateJob(request_id="b-1", model="ling", prompt="hi", sampling=Sampling(max_tokens=3, n=2))
    item = BatchItemJob("b", 1, "c1", job, attempt=2)
    assert BatchItemJob.from_dict(item.to_dict()) == item
