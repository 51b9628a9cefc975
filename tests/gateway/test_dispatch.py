"""Dispatcher against a real Redis: Celery queue layout, live workers, terminal-once failing, cancels."""

from __future__ import annotations

import asyncio
import time

import redis

from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher, kombu_queue_keys
from pipelines.protocol import (
    CANCEL_CHANNEL,
    FINISHED_STREAM_TTL_S,
    ErrorCode,
    Event,
    EventType,
    GenerateJob,
    WorkerInfo,
    cancel_key,
    claim_key,
    stream_key,
    worker_info_key,
    workers_key,
)


def run(redis_url: str, model: str, body):
    """Run `body(dispatcher)` on a fresh loop with a Dispatcher for `model`."""

    async def main():
        d = Dispatcher(GatewayConfig(redis_url=redis_url, models=(model,), worker_dead_after_s=2.0))
        try:
            return await body(d)
        finally:
            await d.close()

    return asyncio.run(main())


def test_tasks_land_in_kombu_priority_lists(redis_url, model):
    async def body(d: Dispatcher):
        await d.submit(GenerateJob(request_id=f"{model}-a", model=model, prompt="x"), [])
        await d.submit(GenerateJob(request_id=f"{model}-b", model=model, prompt="y", priority=5), [])
        await d.submit(GenerateJob(request_id=f"{model}-c", model=model, prompt="z", priority=-3), [])
        return await d.queue_depth(model)

    assert run(redis_url, model, body) == 3
    r = redis.Redis.from_url(redis_url)
    base, p3, _p6, _p9 = kombu_queue_keys(model)
    assert base == f"bailing.{model}" and p3 == f"bailing.{model}\x06\x163"
    assert (r.llen(base), r.llen(p3)) == (2, 1)  # priority 5 -> step 3; 0 and negative -> step 0 (first)


def test_live_workers_need_a_fresh_heartbeat_and_info(redis_url, model):
    r = redis.Redis.from_url(redis_url)
    now = time.time()
    for wid, beat in (("fresh", now), ("stale", now - 10), ("no-info", now)):
        r.zadd(workers_key(model), {f"{model}-{wid}": beat})
    for wid in ("fresh", "stale"):
        info = WorkerInfo(f"{model}-{wid}", model, "ling", "h", 1, "cpu", 4, 1024, ("text", "image"))
        r.set(worker_info_key(info.worker_id), info.to_json())

    state = run(redis_url, model, lambda d: d.live_workers(model))
    assert [w.worker_id for w in state.workers] == [f"{model}-fresh"]
    assert (state.live, state.max_model_len, state.modalities) == (1, 1024, ("text", "image"))


def test_fail_writes_one_terminal_after_the_last_event(redis_url, model):
    r = redis.Redis.from_url(redis_url)
    rid_open, rid_done, rid_empty = f"{model}-open", f"{model}-done", f"{model}-empty"
    r.xadd(stream_key(rid_open), Event(seq=0, type=EventType.STARTED, worker_id="w").encode())
    r.xadd(stream_key(rid_open), Event(seq=1, type=EventType.DELTA, text="é").encode())
    r.xadd(stream_key(rid_done), Event(seq=0, type=EventType.DONE, finish_reason="stop").encode())

    async def body(d: Dispatcher):
        return [
            await d.fail(rid, ErrorCode.UNAVAILABLE, "worker w stopped")
            for rid in (rid_open, rid_done, rid_empty)
        ]

    assert run(redis_url, model, body) == [True, False, True]
    opened = [Event.decode(f) for _, f in r.xrange(stream_key(rid_open))]
    assert [(e.seq, e.type) for e in opened] == [(0, "started"), (1, "delta"), (2, "error")]
    assert (opened[-1].error_code, opened[-1].message) == ("UNAVAILABLE", "worker w stopped")
    assert opened[1].text == "é"
    assert r.xlen(stream_key(rid_done)) == 1  # the worker's terminal stays the only one
    (empty,) = [Event.decode(f) for _, f in r.xrange(stream_key(rid_empty))]
    assert (empty.seq, empty.type) == (0, EventType.ERROR)
    assert 0 < r.ttl(stream_key(rid_empty)) <= 3600


def test_events_end_at_the_terminal_and_skip_duplicates(redis_url, model):
    r = redis.Redis.from_url(redis_url)
    rid = f"{model}-ev"
    r.zadd(workers_key(model), {"w": time.time() + 60})
    for e in (
        Event(seq=0, type=EventType.STARTED, worker_id="w"),
        Event(seq=1, type=EventType.DELTA, text="a"),
        Event(seq=1, type=EventType.DELTA, text="a"),  # a duplicate (redelivery)
        Event(seq=2, type=EventType.DONE),
        Event(seq=3, type=EventType.DELTA, text="after the end"),
    ):
        r.xadd(stream_key(rid), e.encode())

    r.set(claim_key(rid), "1", ex=3600)  # a client-chosen id

    async def body(d: Dispatcher):
        return [(e.seq, e.text) async for e in d.events(rid, model)]

    assert run(redis_url, model, body) == [(0, ""), (1, "a"), (2, "")]
    assert 0 < r.ttl(claim_key(rid)) <= FINISHED_STREAM_TTL_S
    # relayed to its end: the stream goes in FINISHED_STREAM_TTL_S, not an hour (a soak grew Redis)
    assert 0 < r.ttl(stream_key(rid)) <= FINISHED_STREAM_TTL_S


def test_cancel_sets_the_flag_and_publishes(redis_url, model):
    r = redis.Redis.from_url(redis_url)
    sub = r.pubsub()
    sub.subscribe(CANCEL_CHANNEL)
    sub.get_message(timeout=2)
    rid = f"{model}-cx"
    run(redis_url, model, lambda d: d.cancel(rid))
    msg = sub.get_message(timeout=5)
    assert msg is not None and msg["data"] == rid.encode()
    assert r.exists(cancel_key(rid)) and r.ttl(cancel_key(rid)) > 0
    sub.close()


def test_redis_pool_has_room_for_every_admitted_call(redis_url):
    """Each streaming call holds a connection in XREAD BLOCK; redis-py's asyncio pool would stop at
    100 and fail the 101st concurrent call with "Too many connections"."""
    d = Dispatcher(GatewayConfig(redis_url=redis_url, models=("m",), max_inflight=300))
    assert d.redis.connection_pool.max_connections >= 300
