"""BatchFeeder: pulls batch items from the model's batch queue only while a batch slot is free.

Why not let Celery consume the batch queue: its threads fetch whatever arrives, so a worker either
blocks threads on the batch cap (and interactive jobs starve) or keeps re-queueing items it cannot
run yet (a busy loop that ate the CPU the engine needed). The feeder is one thread with its own
kombu connection: free slot -> `take` one message (pop it and record it in kombu's unacked set
in one Lua script, so a killed worker's items come back after the visibility timeout; kombu's own
`basic_get` pops first and records second, and a SIGKILL between the two lost the item) -> run it
on a small thread pool (`BatchRunner.run_payload`, its slot held) -> the feeder acks it afterwards
(only the feeder thread touches the channel). Messages sent with a countdown (retries) wait in a
local heap until due.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kombu import Connection, Exchange
from kombu import Queue as KombuQueue
from kombu.serialization import prepare_accept_content
from kombu.transport import virtual

from pipelines.batches import batch_queue_name
from workers.batch_recovery import HeldItemsSweeper, held_key, holders_key

if TYPE_CHECKING:
    from celery import Celery

    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)
_IDLE_POLL_S = 0.05  # empty queue or no free slot: look again after this long

# KEYS: queue, kombu's unacked index (ZSET tag -> time), kombu's unacked hash (tag -> [message,
# exchange, routing key], the layout kombu's QoS writes and restores from), this worker's held set
# (`batch_recovery.held_key`: what a sweeper requeues should the worker die), the model's holders
# (`batch_recovery.holders_key`). ARGV: now, worker id.
_TAKE = """
local raw = redis.call('RPOP', KEYS[1])
if not raw then return false end
local message = cjson.decode(raw)
local props = message['properties']
local tag, info = props['delivery_tag'], props['delivery_info']
redis.call('ZADD', KEYS[2], ARGV[1], tag)
redis.call('HSET', KEYS[3], tag,
  '[' .. raw .. ',' .. cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key']) .. ']')
redis.call('HSET', KEYS[4], tag, 1)
redis.call('SADD', KEYS[5], ARGV[2])
return raw
"""


def take(channel: Any, queue: str, worker_id: str, model: str) -> Any:
    """Pop the next message of `queue` and mark it unacked atomically; None when the queue is empty.

    The message is the one kombu's `basic_get(no_ack=False)` returns: ack it with `message.ack()`;
    left unacked, kombu's visibility-timeout restore puts it back on its queue.
    """
    keys = [queue, channel.unacked_index_key, channel.unacked_key, held_key(worker_id), holders_key(model)]
    raw = channel.client.eval(_TAKE, len(keys), *keys, time.time(), worker_id)
    if raw is None:
        return None
    message = channel.Message(json.loads(raw), channel=channel)
    virtual.QoS.append(channel.qos, message, message.delivery_tag)  # kombu's local bookkeeping only
    message.accept = prepare_accept_content(["json"])
    return message


class BatchFeeder:
    def __init__(self, runtime: WorkerRuntime, app: Celery) -> None:
        self.runtime, self.app = runtime, app
        self.cap = runtime.config.max_batch_inflight
        self._slots = threading.Semaphore(self.cap)
        self._acks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._due: list[tuple[float, int, Any]] = []  # (due time, tie-break, message) held until due
        self._ties = itertools.count()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(self.cap, thread_name_prefix="bailing-batch")
        self._thread = threading.Thread(target=self._loop, name="bailing-batch-feeder", daemon=True)
        cfg = runtime.config
        self.worker_id, self.held = cfg.worker_id, held_key(cfg.worker_id)
        self.sweeper = HeldItemsSweeper(cfg.name, cfg.worker_id)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop fetching; items running finish on their own (the runtime ends them at shutdown)."""
        self._stop.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=False)

    def _loop(self) -> None:
        name = batch_queue_name(self.runtime.config.name)
        options = {"visibility_timeout": self.runtime.config.visibility_timeout_s}
        while not self._stop.is_set():
            try:
                with Connection(self.runtime.config.redis_url, transport_options=options) as conn:
                    channel = conn.channel()
                    kq = KombuQueue(name, Exchange(name, "direct"), routing_key=name)(channel)
                    kq.declare()
                    self._feed(kq)
            except Exception:  # Redis restarting, network: reconnect (unacked items are restored)
                log.exception("batch feeder: connection failed; retrying in 1 s")
                self._stop.wait(1.0)

    def _feed(self, kq: Any) -> None:
        while not self._stop.is_set():
            self._flush_acks(kq.channel)
            if self.sweeper.due():
                self.sweeper.sweep(kq.channel)
            if not self._slots.acquire(timeout=_IDLE_POLL_S):
                continue
            message = self._next(kq)
            if message is None:
                self._slots.release()
                self._stop.wait(_IDLE_POLL_S)
                continue
            self._pool.submit(self._run, message)
        self._flush_acks(kq.channel)

    def _next(self, kq: Any) -> Any:
        """The next message to run now: a held one that is due, else a fresh one (held if not due)."""
        now = time.time()
        if self._due and self._due[0][0] <= now:
            return heapq.heappop(self._due)[2]
        message = take(kq.channel, kq.name, self.worker_id, self.runtime.config.name)
        if message is None:
            return None
        due = _eta(message)
        if due is not None and due > now:
            heapq.heappush(self._due, (due, next(self._ties), message))
            return None
        return message

    def _run(self, message: Any) -> None:
        settled = True
        try:
            body = message.decode()  # Celery task protocol 2: [args, kwargs, embed]
            payload = body[0][0] if isinstance(body, list) and body and body[0] else None
            settled = self.runtime.batches.run_payload(payload, self.app)
        except Exception:
            log.exception("batch feeder: item failed outside the runner")
        finally:
            if settled:
                self._acks.put(message)
            else:  # unacked and held: back on the queue if this worker dies, else after the timeout
                log.error("batch feeder: message %s left unacked", message.delivery_tag)
            self._slots.release()

    def _flush_acks(self, channel: Any) -> None:
        while True:
            try:
                message = self._acks.get_nowait()
            except queue.Empty:
                return
            try:
                message.ack()
                channel.client.hdel(self.held, message.delivery_tag)
            except Exception:
                log.exception("batch feeder: ack failed (the item may run again; its result is written once)")


def _eta(message: Any) -> float | None:
    """The unix time a Celery message with a countdown is due, or None."""
    eta = (message.headers or {}).get("eta")
    if not eta:
        return None
    try:
        return datetime.fromisoformat(eta).timestamp()
    except (TypeError, ValueError):
        return None
