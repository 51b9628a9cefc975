"""The gateway's InferenceServicer (admit -> validate -> dispatch -> relay); gateway/app.py runs it.

Flow of a call: draining? -> model served? (NOT_FOUND) -> admission (RESOURCE_EXHAUSTED) -> live
workers (UNAVAILABLE) -> `convert.request_to_job` (Transcribe: `transcribe.transcribe_to_job`,
GenerateImage: `image.image_request_to_job`, speech and spoken replies: `gateway.speech`, whose RPCs
live in `speech_service.SpeechRPCs`; INVALID_ARGUMENT) -> `Dispatcher.submit` -> `Dispatcher.events`
relayed as chunks / image events / audio chunks or collected into one response. Whenever a
call ends without its terminal event (client cancel, deadline, error) the request is cancelled in
Redis. Health, reflection, the bearer-token interceptor (gateway/tokens.py: admission also counts
calls per token), TLS (gateway/tls.py), the SIGTERM drain and the batch `JobsServicer`
(gateway/jobs.py) are wired up in `gateway.app.GatewayServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import kombu.exceptions
import redis.exceptions

from gateway.api import pb_grpc
from gateway.config import GatewayConfig
from gateway.convert import check_model, list_models_response, request_to_job
from gateway.dispatch import Dispatcher
from gateway.errors import Rejection
from gateway.image import ImageReply, collect_images, image_request_to_job, relay_images
from gateway.media import MediaBlob
from gateway.metrics import GatewayMetrics
from gateway.replies import ResponseBuilder, event_to_chunks
from gateway.speech_service import SpeechRPCs
from gateway.state import RequestTrace
from gateway.tokens import StreamLimit, TokenSet
from gateway.transcribe import transcribe_to_job, transcript_chunks, transcript_response
from pipelines.clock import server_now
from pipelines.protocol import Event, GenerateJob

log = logging.getLogger(__name__)
BACKEND_DOWN = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
request_log = logging.getLogger("bailing.gateway.requests")


@dataclass
class _Call:
    job: GenerateJob
    trace: RequestTrace
    finished: bool = False  # the terminal event was read: nothing left to cancel
    cancel_sent: bool = False


# request -> (job, media blobs): `convert.request_to_job`, `transcribe.transcribe_to_job`, ...
ToJob = Callable[..., tuple[GenerateJob, list[MediaBlob]]]
ToChunks = Callable[[str, Event], list[Any]]  # request id, event -> the GenerateChunks to send
WARM_CONNECTIONS = 64  # Redis connections opened before serving (each stream holds one while it waits)


class InferenceServicer(SpeechRPCs, pb_grpc.InferenceServicer):
    def __init__(
        self, cfg: GatewayConfig, dispatcher: Dispatcher, metrics: GatewayMetrics, tokens: TokenSet
    ) -> None:
        self.cfg = cfg
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.tokens = tokens
        self.inflight = 0
        self.per_token = StreamLimit(cfg.max_streams_per_token)  # counted by owner id, never the token
        self.draining = False
        self._background: set[asyncio.Task] = set()

    async def ListModels(self, request, context):
        try:
            states = [await self.dispatcher.live_workers(m) for m in self.cfg.models]
        except BACKEND_DOWN as exc:
            log.error("ListModels: Redis unreachable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway cannot reach Redis")
        return list_models_response(states)

    async def Generate(self, request, context):
        if request.HasField("speech"):
            return await self.spoken_answer(request, context)
        return await self._answer(request, context, "Generate", request_to_job)

    async def GenerateStream(self, request, context):
        if request.HasField("speech"):
            relay = self.spoken_relay(request, context)
        else:
            relay = self._relay(request, context, "GenerateStream", request_to_job, event_to_chunks)
        async with contextlib.aclosing(relay) as chunks:
            async for chunk in chunks:
                yield chunk

    async def Transcribe(self, request, context):
        return transcript_response(await self._answer(request, context, "Transcribe", transcribe_to_job))

    async def TranscribeStream(self, request, context):
        async with contextlib.aclosing(
            self._relay(request, context, "TranscribeStream", transcribe_to_job, transcript_chunks)
        ) as chunks:
            async for chunk in chunks:
                yield chunk

    async def GenerateImage(self, request, context):
        return await self._collected(
            request, context, "GenerateImage", image_request_to_job, ImageReply, collect_images
        )

    async def GenerateImageStream(self, request, context):
        relay = self._relayed(
            request, context, "GenerateImageStream", image_request_to_job, ImageReply, relay_images
        )
        async with contextlib.aclosing(relay) as replies:
            async for reply in replies:
                yield reply

    # ---- media replies (images, speech): bytes taken out of Redis as their events come ------------
    async def _collected(self, request, context, method: str, to_job: ToJob, reply_type: Any, collect: Any):
        """The request's events collected into one reply message (`collect`), media bytes included."""
        async with (
            self._call(request, context, method, to_job) as call,
            contextlib.aclosing(self._events(call, context)) as events,
        ):
            reply = reply_type(call.job, self.dispatcher.take)
            return await collect(events, reply, call.trace, self.cfg.max_message_bytes)

    async def _relayed(self, request, context, method: str, to_job: ToJob, reply_type: Any, relay: Any):
        """The request's events as stream messages (`relay`), as they come."""
        async with (
            self._call(request, context, method, to_job) as call,
            contextlib.aclosing(self._events(call, context)) as events,
            contextlib.aclosing(relay(events, reply_type(call.job, self.dispatcher.take), call.trace)) as out,
        ):
            async for message in out:
                yield message

    # ---- one call ---------------------------------------------------------------------------
    async def _answer(self, request, context, method: str, to_job: ToJob):
        """The request's events collected into one GenerateResponse (the unary RPCs)."""
        async with (
            self._call(request, context, method, to_job) as call,
            contextlib.aclosing(self._events(call, context)) as events,
        ):
            builder = ResponseBuilder(call.job.request_id, call.job.model)
            async for event in events:
                builder.add(event)
            return builder.build(call.trace)

    async def _relay(self, request, context, method: str, to_job: ToJob, to_chunks: ToChunks):
        """The request's events as chunks, as they arrive (the streaming RPCs)."""
        async with (
            self._call(request, context, method, to_job) as call,
            contextlib.aclosing(self._events(call, context)) as events,
        ):
            async for event in events:
                for chunk in to_chunks(call.job.request_id, event):
                    yield chunk

    @contextlib.asynccontextmanager
    async def _call(self, request, context, method: str, to_job: ToJob) -> AsyncIterator[_Call]:
        """Admit, validate and submit the request; then account for it however the call ends."""
        trace = RequestTrace(request_id=request.request_id, model=request.model, method=method)
        started, call, owner, admitted = time.monotonic(), None, None, False
        try:
            owner = self.tokens.owner(context)
            self._admit(request, owner)
            admitted = True
            self._count_inflight(request.model, owner, +1)
            job, blobs = await self._prepare(request, context, trace, to_job)
            call = _Call(job=job, trace=trace)  # from here on, an early end cancels the request
            # grpc.aio does not always cancel a handler blocked outside grpc when the client goes
            # away; the RPC's done callback always fires, so the cancel is sent from there too.
            context.add_done_callback(lambda _ctx, c=call: self._cancel_unfinished(c))
            await self.dispatcher.submit(job, blobs)
            yield call
        except Rejection as rej:
            trace.code = rej.code.name
            await context.abort(rej.code, rej.message)
        except asyncio.CancelledError:
            deadline = call.job.deadline if call else None
            trace.code = "DEADLINE_EXCEEDED" if deadline and server_now() >= deadline - 0.05 else "CANCELLED"
            raise
        except BACKEND_DOWN as exc:
            log.error("request %s: Redis unreachable: %s", trace.request_id, exc)
            trace.code = "UNAVAILABLE"
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway cannot reach Redis")
        except Exception:
            log.exception("request %s: internal error", trace.request_id)
            trace.code = "INTERNAL"
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error (see the gateway log for request {trace.request_id or '(unassigned)'})",
            )
        finally:
            if call is not None:
                self._cancel_unfinished(call)
            if admitted:  # after the spawn: `GatewayServer.stop` waits for inflight 0, then for the spawns
                self._count_inflight(request.model, owner, -1)
            self._report(trace, time.monotonic() - started)

    def _cancel_unfinished(self, call: _Call) -> None:
        """Cancel the request in the engine unless it finished (once, however the call ended)."""
        if not call.finished and not call.cancel_sent:
            call.cancel_sent = True
            self.spawn(self.dispatcher.cancel(call.job.request_id), f"cancel {call.job.request_id}")

    def _admit(self, request, owner: str | None) -> None:
        if self.draining:
            raise Rejection(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down: retry another one")
        check_model(request.model, self.cfg.models)
        if self.inflight >= self.cfg.max_inflight:
            raise Rejection(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many requests in flight: the limit is {self.cfg.max_inflight} (max_inflight)",
            )
        self.per_token.check(owner)

    async def _prepare(
        self, request, context, trace: RequestTrace, to_job: ToJob
    ) -> tuple[GenerateJob, list[MediaBlob]]:
        """The validated job (and its media) of an admitted request that a live worker can take."""
        state = await self.dispatcher.admission_state(request.model)
        remaining = context.time_remaining()
        deadline = trace.submitted_at + remaining if remaining is not None else None
        job, blobs = to_job(
            request,
            self.cfg,
            state if state.live else None,
            submitted_at=trace.submitted_at,
            deadline=deadline,
        )
        trace.request_id = job.request_id
        if not state.live:
            raise Rejection(grpc.StatusCode.UNAVAILABLE, f"no live worker serves model {job.model!r}")
        if request.request_id and not await self.dispatcher.claim_request_id(job.request_id):
            raise Rejection(
                grpc.StatusCode.ALREADY_EXISTS, f"request_id {job.request_id!r} is already in use"
            )
        return job, blobs

    async def _events(self, call: _Call, context) -> AsyncIterator[Event]:
        model = call.job.model
        async for event in self.dispatcher.events(call.job.request_id, model, context.done):
            gap = call.trace.observe(event)
            if gap is not None:
                self.metrics.observe_token_gap(model, gap)
            if event.terminal:
                call.finished = True
            yield event

    def _count_inflight(self, model: str, owner: str | None, delta: int) -> None:
        self.inflight += delta
        self.per_token.add(owner, delta)
        self.metrics.inflight.labels(model).inc(delta)

    def _report(self, trace: RequestTrace, duration_s: float) -> None:
        if trace.model in self.cfg.models:  # unknown names stay out of metric labels
            self.metrics.observe_request(trace, duration_s)
        u = trace.usage
        record = {
            "event": "request",
            "id": trace.request_id,
            "accepted_at": round(trace.submitted_at, 4),  # unix time, to line up with worker logs
            "model": trace.model,
            "method": trace.method,
            "status": trace.code,
            "finish_reason": trace.finish_reason,
            "prompt_tokens": u.prompt_tokens if u else 0,
            "completion_tokens": u.completion_tokens if u else 0,
            "reasoning_tokens": u.reasoning_tokens if u else 0,
            "images": trace.images,
            "audio_s": round(trace.audio_s, 3),
            "ttfa_s": round(trace.ttfa_s, 4) if trace.first_audio_at else None,
            "queue_s": round(trace.queue_s, 4),
            "ttft_s": round(trace.ttft_s, 4) if trace.first_token_at else None,
            "total_s": round(duration_s, 4),
            "worker": trace.worker_id,
        }
        request_log.info(json.dumps(record, separators=(",", ":")))

    # ---- background work (cancels must outlive the cancelled handler) ----------------------
    def spawn(self, coro, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(lambda t: self._finished(t, what))

    def _finished(self, task: asyncio.Task, what: str) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %s", what, task.exception())

    async def flush_background(self, timeout_s: float = 5.0) -> None:
        """Wait for the handlers still unwinding, then for the cancels they sent."""
        until = time.monotonic() + timeout_s
        while self.inflight and time.monotonic() < until:
            await asyncio.sleep(0.01)
        if self._background:
            await asyncio.wait(list(self._background), timeout=max(0.1, until - time.monotonic()))
