"""Handing an image request from a thinker worker to a diffusion-stage worker, through Redis.

A worker started with `--image-stage remote` runs the thinker pass and the condition path itself,
then parks the condition tensors (safetensors bytes) under `handoff_key(request_id)` and sends the
Celery task `TASK_IMAGE_STAGE` (payload: `ImageHandoff`, JSON) to `stage_queue_name(model)`. A stage
worker (`bailing worker --role image-stage`, on its own device) runs the denoising loop and writes the
rest of the request's stream: its events continue the thinker's numbering (`first_seq`), so the
gateway reads one stream; its STARTED event says `{"stage": "image-stage"}`, so the gateway watches
the stage registry (`stage_workers_key`) for that worker's liveness from then on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pipelines.clock import server_now
from pipelines.image_generation import ImageSettings
from pipelines.protocol import (
    IMAGE_STAGE,
    TASK_IMAGE_STAGE,
    WORKER_DEAD_AFTER_S,
    ErrorCode,
    Event,
    EventType,
    handoff_key,
    stage_queue_name,
    stage_workers_key,
    stream_key,
)
from workers.emitter import Control
from workers.redelivery import job_deadline

log = logging.getLogger(__name__)

HANDOFF_TTL_S = 3600  # the stage worker may take the task this much later (a queue behind it)
LIVENESS_EVERY_S = 1.0  # while waiting for a stage worker to take a request, how often to check one lives
TENSORS = ("condition", "negative", "reference")


@dataclass(frozen=True)
class ImageHandoff:
    """The Celery payload of a handed-off image request (tensors travel by `key`, never in here)."""

    request_id: str
    model: str
    key: str  # handoff_key(request_id): the safetensors bytes of TENSORS present
    settings: dict[str, Any]  # ImageSettings fields
    first_seq: int  # the next event number of the request's stream
    prompt_tokens: int = 0
    progress: bool = True  # False for batch items: no step events
    deadline: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageHandoff:
        return cls(**data)

    def image_settings(self) -> ImageSettings:
        fields = dict(self.settings)
        fields["requested"] = tuple(fields["requested"])
        return ImageSettings(**fields)


def settings_dict(settings: ImageSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def pack(tensors: dict[str, torch.Tensor | None]) -> bytes:
    """The request's condition tensors (None ones left out) as safetensors bytes, fp32 on the CPU."""
    present = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items() if v is not None
    }
    return save_tensors(present)


def unpack(data: bytes) -> dict[str, torch.Tensor | None]:
    found = load_tensors(data)
    unknown = sorted(set(found) - set(TENSORS))
    if unknown or "condition" not in found:
        raise ValueError(f"a handoff holds {sorted(found)}; expected condition [+ negative, reference]")
    return {name: found.get(name) for name in TENSORS}


def live_stage_workers(client: Any, model: str) -> int:
    """How many diffusion-stage workers of `model` heartbeat now."""
    return int(client.zcount(stage_workers_key(model), server_now() - WORKER_DEAD_AFTER_S, "+inf"))


class HandOff:
    """The thinker side of a remote image stage: park a request's condition, hand the request over."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self._app: Any = None
        self._lock = threading.Lock()

    def send(self, req: Any, condition: torch.Tensor, negative: torch.Tensor | None) -> None:
        """Hand `req` (workers.image_jobs._Request) over; this worker's part of it then ends."""
        rt, job, flight = self.runtime, req.job, req.flight
        if not live_stage_workers(rt.redis, job.model):
            message = f"no image-stage worker serves model {job.model!r}"
            rt.stop_request(flight, EventType.ERROR, ErrorCode.UNAVAILABLE, message)
            return
        key = handoff_key(job.request_id)
        tensors = {"condition": condition, "negative": negative, "reference": req.plan.reference}
        rt.redis.set(key, pack(tensors), ex=HANDOFF_TTL_S)
        if not req.abort.complete():  # cancelled meanwhile: its terminal event is queued
            rt.redis.delete(key)
            return
        rt.emitter.flush()  # STARTED is written: flight.next_seq is the stage's first event number
        handoff = ImageHandoff(
            job.request_id, job.model, key, settings_dict(req.plan.settings), flight.next_seq,
            req.prompt_tokens, req.report, job_deadline(job),
        )  # fmt: skip
        self._producer().send_task(
            TASK_IMAGE_STAGE, args=[handoff.to_dict()], queue=stage_queue_name(job.model),
            task_id=f"{job.request_id}:stage",
        )  # fmt: skip
        # Keep the request until a stage worker owns it (its STARTED; a batch item: its terminal event,
        # since the batch runner reads the whole stream once this returns), failing it if none is left.
        self._await_stage(req, until_terminal=not req.report)
        rt.flights.pop(job.request_id)
        flight.done.set()  # this worker's part ends without a terminal event: the stage writes it

    def _await_stage(self, req: Any, until_terminal: bool) -> None:
        rt, rid = self.runtime, req.job.request_id
        key, last, next_check = stream_key(rid), "0-0", time.monotonic() + LIVENESS_EVERY_S
        while True:
            for _, entries in rt.redis.xread({key: last}, block=200) or []:
                for entry_id, fields in entries:
                    last, event = entry_id, Event.decode(fields)
                    taken = event.type is EventType.STARTED and (event.info or {}).get("stage") == IMAGE_STAGE
                    if event.terminal or (taken and not until_terminal):
                        return
            deadline = job_deadline(req.job)
            if deadline is not None and server_now() >= deadline:
                self._end(
                    rid, EventType.CANCELLED, ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed"
                )
                return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + LIVENESS_EVERY_S
                if not live_stage_workers(rt.redis, req.job.model):  # nobody will take or finish it
                    message = f"the image-stage workers of model {req.job.model!r} are gone"
                    self._end(rid, EventType.ERROR, ErrorCode.UNAVAILABLE, message)
                    return

    def _end(self, request_id: str, type_: EventType, code: ErrorCode, message: str) -> None:
        """A terminal event numbered as a stage worker's STARTED would be: whichever lands first wins
        (readers drop a repeated number; a stage worker drops a request whose stream has ended)."""
        fields = {"error_code": code, "message": message}
        self.runtime.emitter.put(Control(request_id, type_, fields))
        self.runtime.emitter.flush()

    def _producer(self) -> Any:
        with self._lock:
            if self._app is None:
                from celery import Celery

                self._app = Celery(
                    "bailing-handoff", broker=self.runtime.config.redis_url, set_as_current=False
                )
                self._app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
            return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
