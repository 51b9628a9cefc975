"""StageRuntime: a diffusion-stage worker (`bailing worker --role image-stage`), the image stage of a
model on a device of its own, fed by thinker workers through Redis (`workers.image_handoff`).

Flow of one task: `ImageHandoff` -> dropped if moot (the stream already ended, cancelled, past its
deadline) -> a `Flight` numbered from `first_seq` -> STARTED (`{"stage": "image-stage"}`) -> the
condition tensors from Redis -> `ImageGenerator.new_job` -> `image_output.finish_images` (the same
stage, decode, encode and publishing as a local stage) -> the handoff key deleted. Cancels (pub/sub,
the same `CancelListener`), deadlines and shutdown end a request within one step of the loop. It
loads the checkpoint's diffusion parts only; it heartbeats into `stage_workers_key(model)`, so the
gateway never routes text or thinker work to it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import redis

from models.ming.generation.generator import ImageGenerator
from pipelines.clock import CLOCK, server_now
from pipelines.protocol import (
    HEARTBEAT_INTERVAL_S,
    IMAGE_STAGE,
    ErrorCode,
    Event,
    EventType,
    WorkerInfo,
    cancel_key,
    stage_workers_key,
    stream_key,
    worker_info_key,
)
from workers.background import CancelListener
from workers.config import WorkerConfig
from workers.emitter import Control, Emitter, Flight, Flights
from workers.image_handoff import ImageHandoff, unpack
from workers.image_output import Outlet, finish_images
from workers.image_stage import ImageStage
from workers.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class StageRuntime:
    def __init__(self, config: WorkerConfig) -> None:
        from engine.model_loader import resolve_dtype

        self.config = config
        self.metrics = WorkerMetrics(config.name)
        dtype = resolve_dtype(config.dtype, _device(config.device))
        self.generator = ImageGenerator.load(config.model_dir, config.device, dtype, parts="diffusion")
        if self.generator is None:
            raise ValueError(f"{config.model_dir} has no image-generation heads (no mlp/): nothing to serve")
        self.redis = redis.Redis.from_url(config.redis_url, health_check_interval=30, socket_keepalive=True)
        self.flights = Flights()
        self.emitter = Emitter(self.redis, self.flights, self.metrics, config.name)
        self.stage = ImageStage(self.generator, self.metrics.image_forward)
        self.cancels = CancelListener(self)
        self._beat = threading.Thread(target=self._heartbeat, name="bailing-stage-heartbeat", daemon=True)
        self._stopped = threading.Event()
        self.info = WorkerInfo(
            worker_id=config.worker_id, model=config.name, family=config.family, host=socket.gethostname(),
            pid=os.getpid(), device=str(self.generator.device), max_num_seqs=config.max_num_seqs,
            max_model_len=0, modalities=(), outputs=("image",), started_at=server_now(),
            metrics_port=config.metrics_port,
        )  # fmt: skip

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.stage.start()
        self.emitter.start()
        self.cancels.start()
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port)
        self._beat.start()
        log.info("image-stage worker %s ready: model=%s device=%s", self.config.worker_id, self.config.name,
                 self.generator.device)  # fmt: skip

    def close(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.end_in_flight()
        self.cancels.stop()
        self._beat.join(timeout=5)
        try:
            self.redis.zrem(stage_workers_key(self.config.name), self.config.worker_id)
        except redis.RedisError as exc:
            log.warning("could not leave the stage registry: %s", exc)
        self.stage.stop()
        self.emitter.stop()
        self.redis.close()

    def end_in_flight(self) -> int:
        flights = self.flights.all()
        for flight in flights:
            self._stop(flight, EventType.ERROR, ErrorCode.UNAVAILABLE, "the image-stage worker stops")
        return len(flights)

    def _heartbeat(self) -> None:
        while not self._stopped.is_set():
            try:
                if CLOCK.due():
                    CLOCK.sync(self.redis)
                pipe = self.redis.pipeline(transaction=False)
                pipe.zadd(stage_workers_key(self.config.name), {self.config.worker_id: server_now()})
                pipe.set(worker_info_key(self.config.worker_id), self.info.to_json(), ex=10)
                pipe.execute()
                self.metrics.image_jobs.set(len(self.stage))
            except redis.RedisError as exc:
                log.warning("stage heartbeat failed: %s", exc)
            self._stopped.wait(HEARTBEAT_INTERVAL_S)

    # ---- what the CancelListener calls -------------------------------------------------------
    def steps(self) -> int:
        return 0

    def cancel(self, request_id: str, seen_step: int) -> None:
        flight = self.flights.get(request_id)
        if flight is not None:
            self._stop(flight, EventType.CANCELLED, ErrorCode.CANCELLED, "cancelled by the client")

    def _stop(self, flight: Flight, type_: EventType, code: ErrorCode, message: str) -> bool:
        """End `flight` now (the stage drops its job at its next step); False if it is ending already."""
        with flight.lock:
            if flight.stopping or flight.finished:
                return False
            flight.stopping = True
        self.emitter.put(Control(flight.request_id, type_, {"error_code": code, "message": message}))
        return True

    # ---- one task ----------------------------------------------------------------------------
    def run_payload(self, payload: Any) -> None:
        """One handed-off request; never raises (every path writes its terminal event or drops a moot one)."""
        try:
            handoff = ImageHandoff.from_dict(payload)
        except (TypeError, ValueError) as exc:
            log.warning("malformed image-stage payload: %s", exc)
            return
        if self._moot(handoff):
            return
        flight = Flight(handoff.request_id, next_seq=handoff.first_seq)
        if not self.flights.add(flight):
            return
        try:
            self._serve(handoff, flight)
        except Exception as exc:
            log.exception("request %s: the image stage failed", handoff.request_id)
            self._stop(flight, EventType.ERROR, ErrorCode.INTERNAL, f"internal error ({type(exc).__name__})")
        flight.done.wait()
        self.redis.delete(handoff.key)

    def _moot(self, h: ImageHandoff) -> bool:
        last = self.redis.xrevrange(stream_key(h.request_id), count=1)
        if last and Event.decode(last[0][1]).terminal:
            return True  # a redelivery of a request that ended
        ended = None
        if self.redis.exists(cancel_key(h.request_id)):
            ended = (EventType.CANCELLED, ErrorCode.CANCELLED, "cancelled by the client")
        elif h.deadline is not None and server_now() >= h.deadline:
            ended = (EventType.CANCELLED, ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed")
        if ended is None:
            return False
        flight = Flight(h.request_id, next_seq=h.first_seq)
        self.flights.add(flight)
        self._stop(flight, *ended)
        return True

    def _serve(self, h: ImageHandoff, flight: Flight) -> None:
        started = {"worker_id": self.config.worker_id, "info": {"stage": IMAGE_STAGE}}
        self.emitter.put(Control(h.request_id, EventType.STARTED, started))
        data = self.redis.get(h.key)
        if data is None:
            self._stop(flight, EventType.ERROR, ErrorCode.UNAVAILABLE, "the request's condition expired")
            return
        tensors, s = unpack(data), h.image_settings()
        job = self.generator.new_job(
            tensors["condition"], height=s.height, width=s.width, seeds=s.seeds, steps=s.steps,
            guidance=s.guidance, image_guidance=s.image_guidance, negative=tensors["negative"],
            reference=tensors["reference"],
        )  # fmt: skip
        t0 = time.monotonic()
        published = finish_images(
            self.generator, self.stage, job, s, Outlet(h.request_id, self.redis, self.emitter),
            stopped=lambda: flight.stopping, complete=lambda: self._complete(flight),
            waiting=lambda: self._check_deadline(h, flight), report=h.progress, prompt_tokens=h.prompt_tokens,
        )  # fmt: skip
        if published:
            self.metrics.images_done(s.num_images, s.width, s.height, time.monotonic() - t0)

    def _complete(self, flight: Flight) -> bool:
        with flight.lock:
            if flight.stopping:
                return False
            flight.stopping = True  # from here on a cancel is too late: the DONE event is coming
            return True

    def _check_deadline(self, h: ImageHandoff, flight: Flight) -> None:
        if h.deadline is not None and server_now() >= h.deadline:
            message = "the request's deadline passed"
            self._stop(flight, EventType.CANCELLED, ErrorCode.DEADLINE_EXCEEDED, message)


def _device(name: str):
    import torch

    return torch.device(name)
