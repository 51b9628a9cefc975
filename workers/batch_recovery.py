"""A dead worker's batch items go back on their queue within seconds, not after the visibility timeout.

Each item a worker's `BatchFeeder` takes is recorded under `held_key(worker_id)` by the same Lua
script that moves it into kombu's unacked hash (`batch_feeder.take`); its ack removes the record.
Every live worker's feeder sweeps its model's heartbeat registry and holders set (`holders_key`: a
worker that left the registry, then died holding items, is found there) once a second
(`HeldItemsSweeper`): a worker silent for longer than `WORKER_DEAD_AFTER_S` has its held items pushed
back on their queue,
one Lua script per item (`_REQUEUE_ONE`), which
- re-reads the heartbeat inside the script, against Redis's own clock, so a worker that beat again in
  between keeps its items, and moves the item only while it is still in the unacked hash, so two
  sweepers cannot both requeue it;
- pushes it with a fresh delivery tag (re-tagged in Python: Redis's cjson would turn `[]` into `{}`),
  so a slow-but-alive worker's late ack of the old tag removes nothing of the item's new holder;
then `_FORGET` drops the dead worker from the registry, so the next sweep does not look at it again.
An item that a paused worker finishes after its requeue is still recorded once: the batch store writes
each item's result with HSETNX. The broker's visibility timeout stays as the backstop (e.g. when the
last worker of a model died and none sweeps).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from kombu.transport.redis import Channel as KombuRedisChannel

from pipelines.protocol import WORKER_DEAD_AFTER_S, workers_key

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 1.0


def held_key(worker_id: str) -> str:
    """Delivery tag -> 1 for each batch message `worker_id` took and has not acked yet."""
    return f"bailing:held:{worker_id}"


def holders_key(model: str) -> str:
    """The ids of `model`'s workers that have held items (added at take): a worker that left the
    registry with items still held (it died after leaving it) is found here."""
    return f"bailing:holders:{model}"


# Both scripts re-read the worker's heartbeat against Redis's clock and do nothing (-1) if it beat
# within ARGV[2] seconds. KEYS: registry (ZSET id -> last heartbeat), the worker's held set, kombu's
# unacked hash (tag -> [message, exchange, routing key]), kombu's unacked index (ZSET tag -> time).
_STALE = """
local t = redis.call('TIME')
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if beat and tonumber(beat) > tonumber(t[1]) + tonumber(t[2]) / 1000000 - tonumber(ARGV[2]) then
  return -1
end
"""
# ARGV: worker id, dead-after s, old tag, queue, the message with its fresh tag. -> 1 requeued, 0 gone
_REQUEUE_ONE = (
    _STALE
    + """
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then
  redis.call('RPUSH', ARGV[4], ARGV[5])
  redis.call('HDEL', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('HDEL', KEYS[2], ARGV[3])
  return 1
end
redis.call('HDEL', KEYS[2], ARGV[3])
return 0
"""
)
# KEYS: registry, the worker's held set, holders. ARGV: worker id, dead-after s. -> 1 forgotten, 0 items left
_FORGET = (
    _STALE
    + """
if redis.call('HLEN', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""
)


def with_fresh_tag(entry: bytes) -> tuple[str, str, str]:
    """kombu's unacked entry -> (old tag, queue, the message to push back, re-tagged and redelivered)."""
    message, _exchange, queue = json.loads(entry)
    props = message["properties"]
    old = props["delivery_tag"]
    props["delivery_tag"] = str(uuid.uuid4())
    props.setdefault("delivery_info", {})["redelivered"] = True
    message.setdefault("headers", {})["redelivered"] = True
    return old, queue, json.dumps(message)


class HeldItemsSweeper:
    """Requeues the held batch items of `model`'s dead workers (run from the feeder's thread)."""

    def __init__(self, model: str, worker_id: str) -> None:
        self.model, self.worker_id = model, worker_id
        self._next = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def sweep(self, channel: Any) -> int:
        """Look once at the registry and the holders; returns the items requeued by this sweep."""
        self._next = time.monotonic() + SWEEP_EVERY_S
        client, registry = channel.client, workers_key(self.model)
        seconds, micros = client.time()
        since = seconds + micros / 1e6 - WORKER_DEAD_AFTER_S  # the scripts judge by the same bound
        live = {m.decode() for m in client.zrangebyscore(registry, since, "+inf")}
        stale = {m.decode() for m in client.zrangebyscore(registry, "-inf", since)}
        stale |= {m.decode() for m in client.smembers(holders_key(self.model))} - live
        requeued = 0
        for worker_id in sorted(stale):
            if worker_id == self.worker_id:
                continue  # this worker is alive (it is running this); its own beat is just late
            n = self._requeue(channel, worker_id)
            if n > 0:
                log.warning("worker %s stopped: %d batch item(s) it held are back on the queue", worker_id, n)
                requeued += n
        return requeued

    def _requeue(self, channel: Any, worker_id: str) -> int:
        unacked, index = channel.unacked_key, channel.unacked_index_key
        return requeue_held(channel.client, worker_id, self.model, unacked, index)


def requeue_held(
    client: Any,
    worker_id: str,
    model: str,
    unacked: str = KombuRedisChannel.unacked_key,
    unacked_index: str = KombuRedisChannel.unacked_index_key,
) -> int:
    """Put `worker_id`'s held items back on their queues unless it heartbeats in `model`'s registry.

    A worker that stops calls it for itself once it left the registry: items it took and did not ack
    (finished during its shutdown, or waiting for a retry's countdown) go back at once."""
    registry, held = workers_key(model), held_key(worker_id)
    keys = [registry, held, unacked, unacked_index]
    requeued = 0
    for tag in client.hkeys(held):
        entry = client.hget(unacked, tag)
        if entry is None:  # acked after the record was read: nothing to put back
            client.eval(_REQUEUE_ONE, len(keys), *keys, worker_id, WORKER_DEAD_AFTER_S, tag, "", "")
            continue
        old, queue, message = with_fresh_tag(entry)
        args = (worker_id, WORKER_DEAD_AFTER_S, old, queue, message)
        done = int(client.eval(_REQUEUE_ONE, len(keys), *keys, *args))
        if done < 0:
            return requeued  # it beat again: alive after all
        requeued += done
    client.eval(_FORGET, 3, registry, held, holders_key(model), worker_id, WORKER_DEAD_AFTER_S)
    return requeued
