"""Prometheus metrics of one worker (own CollectorRegistry; HTTP server only when a port is given).

Flow: the emitter counts requests and tokens and observes latencies per finished request; the engine
thread observes every step's batch size through `StepObservingMetrics`; the heartbeat thread copies
the engine's gauges (running, waiting, KV usage, largest batch) from `engine.metrics.snapshot()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from engine.metrics import EngineMetrics

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_IMAGE_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class StepObservingMetrics(EngineMetrics):
    """EngineMetrics that also reports each step's batch size (called by the engine under its lock)."""

    def __init__(self, on_step: Callable[[int], None]) -> None:
        super().__init__()
        self._on_step = on_step

    def record_step(self, *args: Any, **kwargs: Any) -> None:
        super().record_step(*args, **kwargs)
        self._on_step(self.last_batch_seqs)


class WorkerMetrics:
    def __init__(self, model: str) -> None:
        self.registry = reg = CollectorRegistry()
        self._model = model
        labels = {"model": model}
        self.requests = Counter(
            "bailing_worker_requests",
            "Requests finished, by outcome (done, error, cancelled)",
            ["model", "outcome"],
            registry=reg,
        )
        self.prompt_tokens = Counter(
            "bailing_worker_prompt_tokens", "Prompt tokens of admitted requests", ["model"], registry=reg
        ).labels(**labels)
        self.generated_tokens = Counter(
            "bailing_worker_generated_tokens", "Tokens generated", ["model"], registry=reg
        ).labels(**labels)
        self.stream_events = Counter(
            "bailing_worker_stream_events", "Events appended to request streams", ["model"], registry=reg
        ).labels(**labels)
        self.stream_writes = Counter(
            "bailing_worker_stream_writes",
            "Pipelined Redis round trips that appended them",
            ["model"],
            registry=reg,
        ).labels(**labels)
        self.running = self._gauge("bailing_worker_running_requests", "Requests running in the engine")
        self.waiting = self._gauge("bailing_worker_waiting_requests", "Requests waiting in the engine")
        self.kv_usage = self._gauge("bailing_worker_kv_cache_usage", "Fraction of KV cache blocks in use")
        self.batch_max = self._gauge("bailing_worker_batch_size_max", "Largest batch (sequences) seen")
        self.shared_blocks_peak = self._gauge(
            "bailing_worker_kv_shared_blocks_peak", "Most KV blocks held by several sequences at once"
        )
        self.forked_samples = self._gauge(
            "bailing_worker_forked_samples",
            "Samples of n > 1 requests started from sample 0's prompt KV (no prefill of their own)",
        )
        self.held_decodes = self._gauge(
            "bailing_worker_held_decodes",
            "Decodes that sat out a step so a better-priority (interactive) prompt ran alone",
        )
        self.engine_prompt_tokens = self._gauge(
            "bailing_worker_engine_prompt_tokens",
            "Prompt tokens the engine computed (prefix-cache hits and forked samples excluded)",
        )
        self.batch = Histogram(
            "bailing_worker_batch_size",
            "Sequences per engine step",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=reg,
        ).labels(**labels)
        self.steps = Counter(
            "bailing_worker_engine_steps", "Engine steps run", ["model"], registry=reg
        ).labels(**labels)
        self.ttft = Histogram(
            "bailing_worker_time_to_first_token_seconds",
            "From engine admission to the first generated token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        ).labels(**labels)
        self.itl = Histogram(
            "bailing_worker_inter_token_latency_seconds",
            "Time between consecutive generated tokens",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        ).labels(**labels)

        self.media_parts = Counter(
            "bailing_worker_media_parts", "Media parts of admitted requests", ["model", "kind"], registry=reg
        )
        self.media_seconds = Histogram(
            "bailing_worker_media_seconds",
            "Per request with media: decoding + preprocessing (stage=process) and encoders (stage=encode), "
            "both in the task thread, outside the engine loop",
            ["model", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )

        self.images = Counter("bailing_worker_images", "Images generated", ["model", "size"], registry=reg)
        self.image_steps = Counter(
            "bailing_worker_image_steps",
            "Denoising steps run, one per image per step (its rate is the stage's steps/s)",
            ["model"],
            registry=reg,
        ).labels(**labels)
        self.image_seconds = Histogram(
            "bailing_worker_image_seconds",
            "Per image: seconds from the job's start to its bytes, by snapped size (WxH)",
            ["model", "size"],
            buckets=_IMAGE_BUCKETS,
            registry=reg,
        )
        self.image_jobs = self._gauge(
            "bailing_worker_image_jobs", "Image requests in the image stage's denoising loop now"
        )
        self.image_batch = Histogram(
            "bailing_worker_image_batch_size",
            "Images per DiT forward of the image stage (requests batched together)",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=reg,
        ).labels(**labels)
        self._speech_metrics(reg, labels)

    def _speech_metrics(self, reg: CollectorRegistry, labels: dict[str, str]) -> None:
        self.speech_jobs = self._gauge(
            "bailing_worker_speech_jobs", "Speech requests (and spoken replies) in the speech stage now"
        )
        self.speech_audio_seconds = Counter(
            "bailing_worker_speech_audio_seconds",
            "Seconds of speech audio published (at the requested speed)",
            ["model"],
            registry=reg,
        ).labels(**labels)
        self.speech_steps = Counter(
            "bailing_worker_speech_talker_steps",
            "Talker steps run, one per request per step (each step is one latent patch)",
            ["model"],
            registry=reg,
        ).labels(**labels)
        self.speech_batch = Histogram(
            "bailing_worker_speech_batch_size",
            "Requests per talker forward of the speech stage (newcomers' prefills count apart)",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=reg,
        ).labels(**labels)
        self.speech_ttfa = Histogram(
            "bailing_worker_speech_time_to_first_audio_seconds",
            "From a speech request's start in the worker to its first audio chunk",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        ).labels(**labels)

    def speech_forward(self, requests: int, seconds: float) -> None:
        """One talker step of the speech stage over `requests` requests."""
        self.speech_steps.inc(requests)
        self.speech_batch.observe(requests)

    def speech_first_audio(self, seconds: float) -> None:
        self.speech_ttfa.observe(seconds)

    def speech_done(self, audio_seconds: float) -> None:
        self.speech_audio_seconds.inc(audio_seconds)

    def image_forward(self, images: int, seconds: float) -> None:
        """One DiT forward of the image stage over `images` images (all their CFG branches)."""
        self.image_steps.inc(images)
        self.image_batch.observe(images)

    def images_done(self, n: int, width: int, height: int, seconds: float) -> None:
        size = f"{width}x{height}"
        self.images.labels(model=self._model, size=size).inc(n)
        for _ in range(n):
            self.image_seconds.labels(model=self._model, size=size).observe(seconds / n)

    def media(self, parts: dict[str, int], process_s: float, encode_s: float) -> None:
        for kind, n in parts.items():
            if n:
                self.media_parts.labels(model=self._model, kind=kind).inc(n)
        self.media_seconds.labels(model=self._model, stage="process").observe(process_s)
        self.media_seconds.labels(model=self._model, stage="encode").observe(encode_s)

    def _gauge(self, name: str, doc: str) -> Any:
        return Gauge(name, doc, ["model"], registry=self.registry).labels(model=self._model)

    # ---- updates -----------------------------------------------------------------------------------
    def on_step(self, batch_seqs: int) -> None:
        self.steps.inc()
        self.batch.observe(batch_seqs)

    def finished(self, outcome: str) -> None:
        self.requests.labels(model=self._model, outcome=outcome).inc()

    def latencies(self, ttft_s: float, itl_s: list[float]) -> None:
        self.ttft.observe(ttft_s)
        for x in itl_s:
            self.itl.observe(x)

    def update_from_engine(self, snap: dict[str, Any]) -> None:
        self.running.set(snap["num_running"])
        self.waiting.set(snap["num_waiting"])
        self.kv_usage.set(snap["kv_usage"])
        self.batch_max.set(snap.get("max_batch_seqs", 0))
        self.shared_blocks_peak.set(snap.get("peak_shared_kv_blocks", 0))
        self.forked_samples.set(snap.get("forked_samples", 0))
        self.engine_prompt_tokens.set(snap.get("prompt_tokens", 0))
        self.held_decodes.set(snap.get("held_decodes", 0))

    def serve(self, port: int) -> Any:
        """Start the /metrics HTTP server on `port` (all interfaces); returns the server."""
        server, _thread = start_http_server(port, registry=self.registry)
        return server
