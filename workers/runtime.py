"""WorkerRuntime: the one engine of this process and the threads around it (the only process state).

Flow of a job: `run(job)` drops it if a redelivery makes it moot (terminal already written, deadline
passed, cancel flag set, still running elsewhere), registers a `Flight`, queues STARTED, builds the
engine inputs with `pipelines.text`, adds the request with the emitter's queue as its output queue
and waits until the emitter has written the request's terminal event. Cancels (pub/sub listener),
deadlines (the waiting task thread) and shutdown end a request through `stop_request` (see
`workers.aborts`): its KV blocks are freed within one engine step and the terminal event says why.
Image jobs (task "image", checkpoints with generation heads) go to `images` (`workers.image_jobs`):
thinker prefills on this engine, then the image stage's denoising loop beside it. Speech jobs (task
"speech", checkpoints with a `talker/`) go to `speech` (`workers.speech_jobs`): the speech stage's
talker loop beside the engine, and its chat entry `speech.speak_stream` for spoken replies.
Batch items go through `batches` (`workers.batch.BatchRunner`), which calls `run` for each.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import redis

from engine.engine import EngineConfig, LLMEngine
from engine.errors import BailingError, RequestError
from engine.model_loader import generation_config
from models.family import get_family
from pipelines import text
from pipelines.clock import server_now
from pipelines.media import MediaLimits, MediaPipeline
from pipelines.protocol import (
    ErrorCode,
    Event,
    EventType,
    GenerateJob,
    MediaRef,
    cancel_key,
)
from workers import redelivery
from workers.aborts import Aborter
from workers.background import CancelListener, Heartbeat
from workers.batch import BATCH_PRIORITY_OFFSET, BatchRunner
from workers.config import WorkerConfig
from workers.emitter import Control, Emitter, Flight, Flights
from workers.metrics import StepObservingMetrics, WorkerMetrics
from workers.spoken_reply import SpokenReply

if TYPE_CHECKING:
    from workers.image_jobs import ImageJobs
    from workers.speech_jobs import SpeechJobs

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.started_at = server_now()
        self.metrics = WorkerMetrics(config.name)
        self.family = get_family(config.family)
        self.processor_factories = [text.import_factory(path) for path in config.logits_processors]
        self.engine = self._load_engine(config)  # slow, and fails loudly for a bad checkpoint
        self.defaults = generation_config(config.model_dir)
        self.redis = redis.Redis.from_url(
            config.redis_url,
            health_check_interval=30,
            socket_keepalive=True,
            client_name=f"bailing-worker:{config.worker_id}",  # visible in CLIENT LIST
        )
        # a multimodal family's front end: media bytes come from Redis, where the gateway parked them
        self.media = (
            MediaPipeline(self.family, config.model_dir, self._media_bytes, _media_limits(config))
            if self.family.processor
            else None
        )
        self.flights = Flights()
        self.emitter = Emitter(self.redis, self.flights, self.metrics, config.name)
        self.aborter = Aborter(self.engine, self.emitter)
        self.images: ImageJobs | None = None  # None: no generation heads
        self.speech: SpeechJobs | None = None  # None: no talker
        if self.media is not None:  # imported here: a text worker need not hold diffusers, torchaudio, av
            from workers.image_jobs import load_images
            from workers.speech_jobs import load_speech

            self.images, self.speech = load_images(self, config), load_speech(self, config)
        self.engine.metrics = StepObservingMetrics(self._after_step)  # before the first step
        self.cancels = CancelListener(self)
        self.heartbeat = Heartbeat(self)
        self.batches = BatchRunner(self)  # queued batch items (pulled by the BatchFeeder) run through `run`
        self._metrics_server: Any = None
        self._closed = False

    def _load_engine(self, config: WorkerConfig) -> LLMEngine:
        placement = config.placement(os.environ)
        engine_config = EngineConfig(
            max_num_seqs=config.max_num_seqs,
            kv_cache_bytes=config.kv_cache_bytes,
            max_model_len=config.max_model_len,
            background_priority=BATCH_PRIORITY_OFFSET,  # batch items (and interactive priority >= it)
            background_prefill_tokens=config.batch_prefill_tokens,
            tensor_parallel_size=placement.parallel.tensor_parallel_size,  # torchrun's WORLD_SIZE if set
            expert_parallel=placement.parallel.expert_parallel,
            compile_decode=config.compile_decode,
            quantization=config.quantization,
        )
        return LLMEngine(
            config.model_dir,
            config.device,
            config.dtype,
            engine_config,
            placement=placement,
            on_group_failure=_end_worker_process,
        )

    @property
    def outputs(self) -> tuple[str, ...]:
        """What this worker's model produces (announced in its WorkerInfo)."""
        images = ("image",) if self.images is not None else ()
        audio = ("audio",) if self.speech is not None else ()
        return ("text", *images, *audio)

    @property
    def voices(self) -> tuple[str, ...]:
        """The talker's voice presets, the default first (announced in its WorkerInfo)."""
        return self.speech.voices if self.speech is not None else ()

    def _media_bytes(self, ref: MediaRef) -> bytes | None:
        return self.redis.get(ref.key)

    def _warm_redis_pool(self, n: int) -> None:
        """Open a connection per task thread now rather than inside the first burst of jobs."""
        pool = self.redis.connection_pool
        conns = [pool.get_connection() for _ in range(n)]
        for conn in conns:
            pool.release(conn)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine loop, emitter, cancel listener, metrics server and heartbeat."""
        self.engine.start()
        if self.images is not None:
            self.images.start()
        if self.speech is not None:
            self.speech.start()
        self.emitter.start()
        self.cancels.start()
        if self.config.metrics_port:
            self._metrics_server = self.metrics.serve(self.config.metrics_port)
        self._warm_redis_pool(self.config.max_num_seqs)
        self.heartbeat.start()  # only now: the registry lists workers that can serve
        log.info(
            "worker %s ready: model=%s family=%s device=%s max_model_len=%d",
            self.config.worker_id,
            self.config.name,
            self.config.family,
            self.engine.device,
            self.engine.max_model_len,
        )

    def close(self) -> None:
        """Stop everything; requests still in flight end with ERROR UNAVAILABLE. Idempotent."""
        if self._closed:
            return
        self._closed = True
        log.info("worker %s stopping (%d requests in flight)", self.config.worker_id, len(self.flights))
        self.end_in_flight()
        self.cancels.stop()
        self.heartbeat.stop()  # leaves the registry
        if self.images is not None:
            self.images.stop()
        if self.speech is not None:
            self.speech.stop()
        self.engine.shutdown()
        self.emitter.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.redis.close()
        log.info("worker %s stopped", self.config.worker_id)

    def end_in_flight(self) -> int:
        """End every request in flight with ERROR UNAVAILABLE (the client may retry elsewhere)."""
        flights = self.flights.all()
        for flight in flights:
            self.stop_request(flight, EventType.ERROR, ErrorCode.UNAVAILABLE, "the worker is shutting down")
        return len(flights)

    # ---- one job -----------------------------------------------------------------------------------
    def run_payload(self, payload: Any, task_id: str | None) -> None:
        """Decode a Celery payload and run it; a malformed one gets ERROR INVALID_ARGUMENT."""
        try:
            if not isinstance(payload, dict):
                raise ValueError("the task takes exactly one argument, the job object")
            job = GenerateJob.from_dict(payload)
            if not isinstance(job.request_id, str) or not job.request_id:
                raise ValueError("request_id must be a non-empty string")
        except Exception as exc:
            rid = payload.get("request_id") if isinstance(payload, dict) else None
            rid = rid if isinstance(rid, str) and rid else task_id
            log.warning("request %s: malformed job payload: %s", rid, exc)
            if rid:
                error = Event(
                    0,
                    EventType.ERROR,
                    error_code=ErrorCode.INVALID_ARGUMENT,
                    message=f"malformed job payload: {exc}",
                )
                redelivery.write_event(self.redis, rid, error)
                self.metrics.finished(error.type.value)
            return
        self.run(job)

    def run(self, job: GenerateJob, final_only: bool = False) -> None:
        """Serve one job; returns once its terminal event is in the stream. Never raises.

        `final_only` (batch items: nobody streams them) writes the text once, at the end, rather than
        per step: the emitter's work per step then scales with the interactive requests only.
        """
        rid = job.request_id
        try:
            run_it, written = redelivery.check(self.redis, job, self.config.name)
            if written is not None:
                self.metrics.finished(written.type.value)
            if not run_it:  # moot, or running elsewhere
                return
            flight = Flight(rid, queued_s=_queued_s(job))
            if not self.flights.add(flight):
                log.info("request %s is already running in this worker; dropping the duplicate", rid)
                return
        except Exception:
            log.exception("request %s: cannot start it", rid)
            return
        try:
            self._serve(job, flight, final_only)
        finally:
            self.flights.pop(rid)
            self.aborter.unregister(rid)
            if flight.reply is not None:  # its terminal event is written: no more speech
                flight.reply.stop()

    def _serve(self, job: GenerateJob, flight: Flight, final_only: bool = False) -> None:
        rid = job.request_id
        self.emitter.put(Control(rid, EventType.STARTED, {"worker_id": self.config.worker_id}))
        try:
            if self.redis.exists(cancel_key(rid)):  # after registering: a later cancel finds the flight
                self.stop_request(flight, EventType.CANCELLED, ErrorCode.CANCELLED, "cancelled by the client")
            elif job.task == "image":
                self._image(job, flight, final_only)
            elif job.task == "speech":
                self._speech(job, flight)
            else:
                self._submit(job, flight, final_only)
        except (BailingError, ValueError, TypeError) as exc:
            self._fail(flight, ErrorCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            log.exception("request %s: unexpected error", rid)
            self._fail(
                flight, ErrorCode.INTERNAL, f"internal error ({type(exc).__name__}); see the worker log"
            )
        self._wait(job, flight)

    def _submit(self, job: GenerateJob, flight: Flight, final_only: bool = False) -> None:
        if job.model != self.config.name:
            raise RequestError(f"model {job.model!r} sent to the queue of {self.config.name!r}")
        t0 = time.monotonic()
        prepared = text.prepare(
            job,
            self.engine,
            self.family,
            self.defaults,
            self.config.default_max_tokens,
            self.processor_factories,
            self.media,
        )
        if isinstance(job.priority, bool) or not isinstance(job.priority, int):
            raise ValueError(f"priority must be an integer, got {job.priority!r}")
        media = prepared.media
        if media is not None:  # the encoders run here, in the task thread, outside the flight lock
            t1 = time.monotonic()
            media = self.engine.encode_media(prepared.prompt_ids, media)
            self.metrics.media(_media_counts(job), t1 - t0, time.monotonic() - t1)
        self._spoken_reply(job, flight)  # a reply also spoken: its speech stream starts now
        with flight.lock:
            if flight.stopping:  # cancelled (or past its deadline) while its inputs were built
                return
            flight.presenter = prepared.presenter  # before the engine can produce an output
            self.engine.add_request(
                prepared.prompt_ids,
                prepared.params,
                request_id=job.request_id,
                priority=job.priority,
                output_queue=self.emitter.queue,
                final_only=final_only,
                media=media,
            )
            flight.added = True
        self.metrics.prompt_tokens.inc(len(prepared.prompt_ids))

    def _spoken_reply(self, job: GenerateJob, flight: Flight) -> None:
        if job.speech is None:
            return
        if self.speech is None:
            raise RequestError(f"model '{job.model}' does not speak (outputs: {', '.join(self.outputs)})")
        flight.reply = SpokenReply(job.request_id, self.engine, self.emitter)  # stopped in `run`
        flight.reply.start(self.speech.speak_stream(job.request_id, flight, job.speech, flight.reply.spoken))
        self.aborter.register(job.request_id, flight.reply.end_early)  # unregistered in `run`

    def _image(self, job: GenerateJob, flight: Flight, final_only: bool = False) -> None:
        if job.model != self.config.name:
            raise RequestError(f"model {job.model!r} sent to the queue of {self.config.name!r}")
        if self.images is None:
            raise RequestError(f"model '{job.model}' does not generate images (outputs: text)")
        self.images.run(job, flight, progress=not final_only)

    def _speech(self, job: GenerateJob, flight: Flight) -> None:
        if job.model != self.config.name:
            raise RequestError(f"model {job.model!r} sent to the queue of {self.config.name!r}")
        if self.speech is None:
            raise RequestError(f"model '{job.model}' does not speak (outputs: {', '.join(self.outputs)})")
        self.speech.run(job, flight)

    def _wait(self, job: GenerateJob, flight: Flight) -> None:
        """Block until the terminal event is written; end the request when its deadline passes."""
        deadline = redelivery.job_deadline(job)
        while not flight.done.wait(None if deadline is None else max(0.0, deadline - server_now())):
            if deadline is not None and server_now() >= deadline:
                self.stop_request(
                    flight, EventType.CANCELLED, ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed"
                )
                deadline = None

    def _fail(self, flight: Flight, code: ErrorCode, message: str) -> None:
        log.info("request %s rejected: %s: %s", flight.request_id, code, message)
        with flight.lock:
            flight.stopping = True
        self.emitter.put(
            Control(flight.request_id, EventType.ERROR, {"error_code": code, "message": message})
        )

    # ---- ending a request early --------------------------------------------------------------------
    def stop_request(
        self,
        flight: Flight,
        type_: EventType,
        code: ErrorCode,
        message: str,
        info: dict[str, Any] | None = None,
    ) -> bool:
        """Abort `flight` (KV freed within one engine step) and queue its terminal event."""
        return self.aborter.stop(flight, type_, code, message, info)

    def _after_step(self, batch_seqs: int) -> None:
        """The engine thread's hook at the end of every step (engine lock held); never raises."""
        try:
            self.metrics.on_step(batch_seqs)
            self.aborter.after_step()
        except Exception:  # an exception here would fail the engine step and every request in it
            log.exception("step hook failed")

    def steps(self) -> int:
        """The engine's step count (what a cancel's info reports as seen)."""
        return self.engine.metrics.steps

    def cancel(self, request_id: str, seen_step: int) -> None:
        """A client cancel for `request_id` (from the listener); no-op unless it is in flight here."""
        flight = self.flights.get(request_id)
        if flight is not None:
            info = {"cancel_seen_step": seen_step}
            self.stop_request(
                flight, EventType.CANCELLED, ErrorCode.CANCELLED, "cancelled by the client", info
            )


def _media_limits(config: WorkerConfig) -> MediaLimits:
    return MediaLimits(
        config.max_image_pixels, config.max_audio_seconds, config.max_video_seconds, config.max_video_frames
    )


def _media_counts(job: GenerateJob) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in job.messages or ():
        for part in message.parts:
            if part.type != "text":
                counts[part.type] = counts.get(part.type, 0) + 1
    return counts


def _queued_s(job: GenerateJob) -> float:
    t = job.submitted_at
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        return 0.0
    return max(0.0, server_now() - t)


GROUP_FAILED_EXIT = 75


def _end_worker_process(why: str) -> None:
    """A broken rank group cannot serve: leave at once, as a killed worker would. Nothing in flight is
    acknowledged, so its jobs are redelivered; the heartbeat stops; follower ranks end with us."""
    log.critical("ending this worker: its rank group failed (%s)", why)
    logging.shutdown()
    os._exit(GROUP_FAILED_EXIT)
