"""Settling a finished batch item (its result, retry or deferral written to Redis) survives a Redis
restart: it is tried again while Redis is unreachable, and reported unsettled (so the feeder leaves the
message unacked rather than lose the item) when Redis stays away or the failure is not Redis's."""

from __future__ import annotations

import kombu.exceptions
import pytest
import redis

import workers.batch as batch
from pipelines.batches import BatchItemJob
from pipelines.protocol import GenerateJob


@pytest.fixture()
def item() -> BatchItemJob:
    return BatchItemJob("b1", 3, "c3", GenerateJob(request_id="r", model="ling", prompt="hi"))


def failing(times: int, error: Exception):
    calls = []

    def settle() -> None:
        calls.append(1)
        if len(calls) <= times:
            raise error

    return settle, calls


@pytest.mark.parametrize(
    "error",
    [redis.ConnectionError("refused"), redis.TimeoutError("slow"), kombu.exceptions.OperationalError("down")],
)
def test_settling_is_retried_while_redis_is_unreachable(item, monkeypatch, error):
    monkeypatch.setattr(batch.time, "sleep", lambda s: None)
    settle, calls = failing(3, error)
    assert batch.settle_patiently(item, settle) is True
    assert len(calls) == 4


def test_an_item_not_settled_in_time_is_reported_unsettled(item, monkeypatch):
    slept = []
    monkeypatch.setattr(batch.time, "sleep", slept.append)
    monkeypatch.setattr(batch, "SETTLE_PATIENCE_S", 3.0)
    settle, _ = failing(10**6, redis.ConnectionError("refused"))
    assert batch.settle_patiently(item, settle) is False
    assert slept == [0.5, 1.0, 2.0]  # backoff doubles; the next wait (4 s) would pass the patience


def test_a_failure_that_is_not_redis_is_not_retried(item):
    settle, calls = failing(1, ValueError("bad"))
    assert batch.settle_patiently(item, settle) is False
    assert len(calls) == 1
