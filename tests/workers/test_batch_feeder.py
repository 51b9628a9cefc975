"""`take`, the BatchFeeder's fetch, on a real Redis with real Celery messages: the message is popped and
recorded as unacked in one step, in exactly the layout kombu's visibility-timeout restore reads, so an
item fetched by a worker that is then SIGKILLed comes back to its queue; an acked one does not. And
the sweeper that puts a dead worker's held items back at once (`workers.batch_recovery`)."""

from __future__ import annotations

import json
import uuid

import pytest
from celery import Celery
from kombu import Connection, Exchange
from kombu import Queue as KombuQueue

from pipelines.protocol import WORKER_DEAD_AFTER_S, workers_key
from workers.batch_feeder import take
from workers.batch_recovery import HeldItemsSweeper, held_key, holders_key, requeue_held


@pytest.fixture()
def queue_name() -> str:
    return f"bailing.test-take-{uuid.uuid4().hex[:8]}.batch"


@pytest.fixture()
def app(redis_url):
    celery = Celery("take-test", broker=redis_url)
    yield celery
    celery.close()


def channel_and_queue(conn: Connection, name: str):
    channel = conn.channel()
    kq = KombuQueue(name, Exchange(name, "direct"), routing_key=name)(channel)
    kq.declare()
    return channel, kq


def test_take_records_the_message_as_unacked_atomically_and_ack_clears_it(redis_url, app, queue_name):
    with Connection(redis_url, transport_options={"visibility_timeout": 3600}) as conn:
        channel, _ = channel_and_queue(conn, queue_name)
        assert take(channel, queue_name, "take@test", "m-take") is None  # empty queue
        app.send_task("bailing.test", args=[{"item": 1}], queue=queue_name)
        message = take(channel, queue_name, "take@test", "m-take")
        assert message.decode()[0] == [{"item": 1}]
        assert channel.client.llen(queue_name) == 0
        tag = message.delivery_tag
        raw = channel.client.hget(channel.unacked_key, tag)
        payload, exchange, routing_key = json.loads(raw)
        assert payload["properties"]["delivery_tag"] == tag  # kombu's layout: [message, exchange, key]
        info = message.delivery_info
        assert (exchange, routing_key) == (
            info["exchange"],
            info["routing_key"],
        ) and routing_key == queue_name
        assert channel.client.zscore(channel.unacked_index_key, tag) is not None
        message.ack()
        assert channel.client.hget(channel.unacked_key, tag) is None
        assert channel.client.zscore(channel.unacked_index_key, tag) is None


def test_an_unacked_taken_message_is_restored_to_its_queue_after_the_visibility_timeout(
    redis_url, app, queue_name
):
    with Connection(redis_url, transport_options={"visibility_timeout": 3600}) as conn:
        channel, _ = channel_and_queue(conn, queue_name)
        app.send_task("bailing.test", args=[{"item": 2}], queue=queue_name)
        message = take(channel, queue_name, "take@test", "m-take")
        tag = message.delivery_tag
        # the fetching worker dies here: nothing acks it. A worker that sees it past the timeout:
        with Connection(redis_url, transport_options={"visibility_timeout": 0}) as other:
            restorer, _ = channel_and_queue(other, queue_name)
            restorer.qos.restore_visible(num=100, interval=1)
            assert restorer.client.zscore(restorer.unacked_index_key, tag) is None
            again = take(restorer, queue_name, "take@test", "m-take")
            assert again is not None and again.delivery_tag == tag
            assert again.decode()[0] == [{"item": 2}]
            again.ack()


# ---- a dead worker's held items (workers.batch_recovery) ---------------------------------------------
def _beat(client, model: str, worker_id: str, age_s: float) -> None:
    seconds, micros = client.time()
    client.zadd(workers_key(model), {worker_id: seconds + micros / 1e6 - age_s})


def test_a_dead_workers_held_items_are_requeued_once_with_a_fresh_tag(redis_url, app, queue_name):
    model, dead, alive = f"m-{uuid.uuid4().hex[:6]}", "dead@test", "alive@test"
    with Connection(redis_url, transport_options={"visibility_timeout": 3600}) as conn:
        channel, _ = channel_and_queue(conn, queue_name)
        for i in range(3):
            app.send_task("bailing.test", args=[{"item": i}], queue=queue_name)
        taken = [take(channel, queue_name, dead, model) for _ in range(2)]
        assert channel.client.hlen(held_key(dead)) == 2 and channel.client.llen(queue_name) == 1
        _beat(channel.client, model, dead, age_s=WORKER_DEAD_AFTER_S + 1)
        _beat(channel.client, model, alive, age_s=0)
        sweeper = HeldItemsSweeper(model, alive)
        assert sweeper.sweep(channel) == 2
        assert sweeper.sweep(channel) == 0  # a second sweep (or sweeper) finds nothing left
        assert channel.client.llen(queue_name) == 3
        assert not channel.client.exists(held_key(dead))
        assert channel.client.zscore(workers_key(model), dead) is None  # forgotten
        assert channel.client.zscore(workers_key(model), alive) is not None
        again = [take(channel, queue_name, alive, model) for _ in range(3)]
        items = sorted(m.decode()[0][0]["item"] for m in again)
        assert items == [0, 1, 2]  # each item once, body intact
        old_tags = {m.delivery_tag for m in taken}
        retaken = [m for m in again if m.headers.get("redelivered")]
        assert len(retaken) == 2 and not old_tags & {m.delivery_tag for m in retaken}
        for m in taken:  # the "dead" worker was only slow: its late acks touch nothing of the new holder's
            m.ack()
        for m in retaken:
            assert channel.client.hget(channel.unacked_key, m.delivery_tag) is not None
            m.ack()


def test_a_live_or_recently_beating_worker_keeps_its_items(redis_url, app, queue_name):
    model, slow, me = f"m-{uuid.uuid4().hex[:6]}", "slow@test", "me@test"
    with Connection(redis_url, transport_options={"visibility_timeout": 3600}) as conn:
        channel, _ = channel_and_queue(conn, queue_name)
        app.send_task("bailing.test", args=[{"item": 7}], queue=queue_name)
        message = take(channel, queue_name, slow, model)
        _beat(channel.client, model, slow, age_s=1.0)  # within WORKER_DEAD_AFTER_S
        assert HeldItemsSweeper(model, me).sweep(channel) == 0
        # stale by the registry read, fresh again by the time its items are looked at: kept
        _beat(channel.client, model, slow, age_s=WORKER_DEAD_AFTER_S + 1)
        sweeper = HeldItemsSweeper(model, me)
        stale = channel.client.zrangebyscore(workers_key(model), "-inf", "+inf")
        _beat(channel.client, model, slow, age_s=0)
        assert [s.decode() for s in stale] == [slow]
        assert sweeper._requeue(channel, slow) == 0
        assert channel.client.hlen(held_key(slow)) == 1 and channel.client.llen(queue_name) == 0
        # a worker never sweeps itself, however late its own beat
        _beat(channel.client, model, slow, age_s=WORKER_DEAD_AFTER_S + 1)
        assert HeldItemsSweeper(model, slow).sweep(channel) == 0
        message.ack()


def test_a_held_record_of_an_item_acked_meanwhile_is_dropped(redis_url, app, queue_name):
    model, dead = f"m-{uuid.uuid4().hex[:6]}", "gone@test"
    with Connection(redis_url, transport_options={"visibility_timeout": 3600}) as conn:
        channel, _ = channel_and_queue(conn, queue_name)
        app.send_task("bailing.test", args=[{"item": 9}], queue=queue_name)
        take(channel, queue_name, dead, model).ack()  # acked, but died before clearing its record
        _beat(channel.client, model, dead, age_s=WORKER_DEAD_AFTER_S + 1)
        assert HeldItemsSweeper(model, "me@test").sweep(channel) == 0
        assert channel.client.llen(queue_name) == 0 and not channel.client.exists(held_key(dead))


def test_a_stopping_worker_gives_back_what_it_holds(redis_url, app, queue_name):
    """`Heartbeat.stop` leaves the registry, then calls `requeue_held` for itself: its acks stopped
    with its feeder, so what it still holds goes back at once."""
    model, me = f"m-{uuid.uuid4().hex[:6]}", "leaving@test"
    with Connection(redis_url, transport_options={"visibility_timeout": 3600}) as conn:
        channel, _ = channel_and_queue(conn, queue_name)
        for i in range(2):
            app.send_task("bailing.test", args=[{"item": i}], queue=queue_name)
            take(channel, queue_name, me, model)
        _beat(channel.client, model, me, age_s=0)
        assert requeue_held(channel.client, me, model) == 0  # still registered: kept
        channel.client.zrem(workers_key(model), me)
        assert requeue_held(channel.client, me, model) == 2
        assert channel.client.llen(queue_name) == 2 and not channel.client.exists(held_key(me))


def test_a_worker_that_left_the_registry_holding_items_is_found_through_the_holders(
    redis_url, app, queue_name
):
    """It left the registry (its stop began), then took more and died: only `holders_key` knows it."""
    model, gone = f"m-{uuid.uuid4().hex[:6]}", "gone-late@test"
    with Connection(redis_url, transport_options={"visibility_timeout": 3600}) as conn:
        channel, _ = channel_and_queue(conn, queue_name)
        app.send_task("bailing.test", args=[{"item": 1}], queue=queue_name)
        take(channel, queue_name, gone, model)
        assert channel.client.zscore(workers_key(model), gone) is None
        assert channel.client.sismember(holders_key(model), gone)
        _beat(channel.client, model, "me@test", age_s=0)
        assert HeldItemsSweeper(model, "me@test").sweep(channel) == 1
        assert channel.client.llen(queue_name) == 1
        assert not channel.client.sismember(holders_key(model), gone)
