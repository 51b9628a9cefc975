"""Plain facts the gateway derives at run time: a model's live workers, and one request's timeline.

`ModelState` is built by `dispatch.live_workers` from the WorkerInfo records; `RequestTrace` follows
one request's events and yields the timings that the response, the metrics and the log line report
(for image generation the first IMAGE event is the first output; AUDIO events are timed on their own:
time to first audio).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.clock import server_now
from pipelines.protocol import MODALITIES, OUTPUTS, Event, EventType, Usage, WorkerInfo


@dataclass(frozen=True)
class ModelState:
    """A served model as its live workers describe it (no workers: nothing is known)."""

    name: str
    workers: tuple[WorkerInfo, ...] = ()

    @property
    def live(self) -> int:
        return len(self.workers)

    @property
    def family(self) -> str:
        return self.workers[0].family if self.workers else ""

    @property
    def max_model_len(self) -> int:
        """The smallest among the workers: any of them may take the request."""
        return min((w.max_model_len for w in self.workers), default=0)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Inputs every live worker accepts, in MODALITIES order."""
        if not self.workers:
            return ()
        common = set.intersection(*(set(w.modalities) for w in self.workers))
        return tuple(m for m in MODALITIES if m in common)

    @property
    def outputs(self) -> tuple[str, ...]:
        """What every live worker produces (text; image with generation heads), in OUTPUTS order."""
        if not self.workers:
            return ()
        common = set.intersection(*(set(w.outputs) for w in self.workers))
        return tuple(o for o in OUTPUTS if o in common)

    @property
    def voices(self) -> tuple[str, ...]:
        """Voice presets every live worker has, in the first worker's order (its first is the default)."""
        if not self.workers:
            return ()
        common = set.intersection(*(set(w.voices) for w in self.workers))
        return tuple(v for v in self.workers[0].voices if v in common)


@dataclass
class RequestTrace:
    """The timeline of one request; times are unix seconds (the worker's event time when it has one)."""

    request_id: str
    model: str
    method: str
    submitted_at: float = field(default_factory=server_now)
    started_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    worker_id: str = ""
    images: int = 0  # IMAGE events seen (image generation)
    audio_chunks: int = 0  # AUDIO events seen (speech synthesis, spoken replies)
    audio_s: float = 0.0  # seconds of audio they hold
    first_audio_at: float | None = None
    usage: Usage | None = None
    finish_reason: str = ""
    code: str = "OK"  # the gRPC status name the client got

    def observe(self, event: Event, now: float | None = None) -> float | None:
        """Record `event`; returns the gap since the previous token delta (inter-token latency), if any."""
        t = event.time or (now if now is not None else server_now())
        gap = None
        if event.type is EventType.STARTED:
            self.started_at = t
            self.worker_id = event.worker_id
        elif event.type is EventType.DELTA:
            if self.first_token_at is None:
                self.first_token_at = t
            elif self.last_token_at is not None:
                gap = max(0.0, t - self.last_token_at)
            self.last_token_at = t
        elif event.type is EventType.IMAGE:  # an image is the first output; no inter-token gap
            self.images += 1
            if self.first_token_at is None:
                self.first_token_at = t
        elif event.type is EventType.AUDIO:
            self.audio_chunks += 1
            self.audio_s += float((event.info or {}).get("duration_s") or 0.0)
            if self.first_audio_at is None:
                self.first_audio_at = t
        if event.terminal:
            self.finished_at = t
            self.usage = event.usage
            self.finish_reason = event.finish_reason
        return gap

    def _since_submit(self, t: float | None) -> float:
        return max(0.0, t - self.submitted_at) if t is not None else 0.0

    @property
    def queue_s(self) -> float:
        return self._since_submit(self.started_at)

    @property
    def ttft_s(self) -> float:
        return self._since_submit(self.first_token_at)

    @property
    def ttfa_s(self) -> float:
        """Gateway accept -> first audio chunk (0 when none came)."""
        return self._since_submit(self.first_audio_at)

    @property
    def total_s(self) -> float:
        end = self.finished_at or self.last_token_at or server_now()
        return self._since_submit(end)
