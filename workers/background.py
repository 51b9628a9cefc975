"""The runtime's two service threads: the cancel listener and the heartbeat (registry + gauges).

Cancel listener: subscribed to `CANCEL_CHANNEL` (payload = request id); a message for a request in
flight here aborts it, recording the engine step at which the message arrived. It reconnects on
Redis errors and, after each (re)subscribe, checks the cancel keys of its in-flight requests so a
cancel published while it was disconnected is not lost.
Heartbeat: every `HEARTBEAT_INTERVAL_S`, ZADD this worker into `workers_key(name)` and refresh its
`WorkerInfo`; copies the engine's gauges into the Prometheus metrics; on stop, leaves the registry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from pipelines.clock import CLOCK, server_now
from pipelines.protocol import (
    CANCEL_CHANNEL,
    HEARTBEAT_INTERVAL_S,
    WorkerInfo,
    cancel_key,
    worker_info_key,
    workers_key,
)
from workers.batch_recovery import requeue_held

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

_INFO_TTL_S = 10
_MAX_BACKOFF_S = 5.0


class _Service:
    """A daemon thread running `_run` until `stop()`."""

    name = "bailing-service"

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        raise NotImplementedError


class CancelListener(_Service):
    name = "bailing-cancels"

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            pubsub = self.runtime.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CANCEL_CHANNEL)
                self._recheck()
                delay = 0.1
                self._listen(pubsub)
            except Exception as exc:  # redis errors above all; the listener must outlive them
                log.warning("cancel listener: %s: %s; reconnecting in %.1f s", type(exc).__name__, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)
            finally:
                pubsub.close()

    def _listen(self, pubsub: Any) -> None:
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is None or message.get("type") != "message":
                continue
            seen_step = self.runtime.steps()
            data = message["data"]
            request_id = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            self.runtime.cancel(request_id, seen_step)

    def _recheck(self) -> None:
        """Cancel in-flight requests whose cancel key was set while this listener was not subscribed."""
        for flight in self.runtime.flights.all():
            if self.runtime.redis.exists(cancel_key(flight.request_id)):
                self.runtime.cancel(flight.request_id, self.runtime.steps())


class Heartbeat(_Service):
    name = "bailing-heartbeat"

    def __init__(self, runtime: WorkerRuntime) -> None:
        super().__init__(runtime)
        cfg, engine = runtime.config, runtime.engine
        self.info = WorkerInfo(
            worker_id=cfg.worker_id,
            model=cfg.name,
            family=cfg.family,
            host=socket.gethostname(),
            pid=os.getpid(),
            device=str(engine.device),
            max_num_seqs=cfg.max_num_seqs,
            max_model_len=engine.max_model_len,
            modalities=runtime.family.modalities,
            outputs=runtime.outputs,
            voices=runtime.voices,
            started_at=runtime.started_at,
            metrics_port=cfg.metrics_port,
        )

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:
                log.exception("heartbeat failed")
            if self._stop.wait(HEARTBEAT_INTERVAL_S):
                return

    def beat(self) -> None:
        cfg = self.runtime.config
        if CLOCK.due():
            CLOCK.sync(self.runtime.redis)
        pipe = self.runtime.redis.pipeline(transaction=False)
        pipe.zadd(workers_key(cfg.name), {cfg.worker_id: server_now()})
        pipe.set(worker_info_key(cfg.worker_id), self.info.to_json(), ex=_INFO_TTL_S)
        pipe.execute()
        self.runtime.metrics.update_from_engine(_engine_snapshot(self.runtime))
        if self.runtime.images is not None:
            self.runtime.metrics.image_jobs.set(self.runtime.images.in_flight())
        if self.runtime.speech is not None:
            self.runtime.metrics.speech_jobs.set(self.runtime.speech.in_flight())

    def stop(self) -> None:
        """Stop beating and leave the registry (best effort: Redis may be gone)."""
        super().stop()
        cfg = self.runtime.config
        try:
            pipe = self.runtime.redis.pipeline(transaction=False)
            pipe.zrem(workers_key(cfg.name), cfg.worker_id)
            pipe.delete(worker_info_key(cfg.worker_id))
            pipe.execute()
            # batch items taken and not acked (their acks stopped with the feeder) go back now
            n = requeue_held(self.runtime.redis, cfg.worker_id, cfg.name)
            if n:
                log.info("put %d batch item(s) this worker held back on the queue", n)
        except redis.RedisError as exc:
            log.warning("could not leave the worker registry: %s", exc)


def _engine_snapshot(runtime: WorkerRuntime) -> dict[str, Any]:
    """engine.metrics.snapshot(), read without the engine lock: retried if a deque moved under it."""
    for _ in range(3):
        try:
            return runtime.engine.metrics.snapshot()
        except RuntimeError:  # "deque mutated during iteration" while the engine thread appends
            time.sleep(0.001)
    return runtime.engine.metrics.snapshot()
