"""`take`, the BatchFeeder's fetch, on a real Redis with real Celery messages: the message is popped and
recorded as unacked in one step, in exactly the layout kombu's visibility-timeout restore reads, so an
item fetched by a worker that is then SIGKILLed comes back to its queue; an acked one does not."""

from __future__ import annotations

import json
import uuid

import pytest
from celery import Celery
from kombu import Connection, Exchange
from kombu import Queue as KombuQueue

from workers.batch_feeder import take


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
        assert take(channel, queue_name) is None  # empty queue
        app.send_task("bailing.test", args=[{"item": 1}], queue=queue_name)
        message = take(channel, queue_name)
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
        message = take(channel, queue_name)
        tag = message.delivery_tag
        # the fetching worker dies here: nothing acks it. A worker that sees it past the timeout:
        with Connection(redis_url, transport_options={"visibility_timeout": 0}) as other:
            restorer, _ = channel_and_queue(other, queue_name)
            restorer.qos.restore_visible(num=100, interval=1)
            assert restorer.client.zscore(restorer.unacked_index_key, tag) is None
            again = take(restorer, queue_name)
            assert again is not None and again.delivery_tag == tag
            assert again.decode()[0] == [{"item": 2}]
            again.ack()
