"""SpeechJobs: speech output in a worker whose checkpoint has a talker, from a job to AUDIO and DONE events.

A speech job (task "speech", its task thread): `pipelines.speech_synthesis.plan` (text -> segments,
voice: a preset or the speaker clip, settings) -> a ticket in the process's `SpeechStage` with every
segment queued and closed -> `speech_output.speak` reads the samples the stage decoded, encodes and
publishes each chunk (bytes under `audio_key`, AUDIO events) -> DONE with `{"speech": SpeechSummary}`
and usage (prompt = talker prompt tokens, completion = latent patches). A chat reply spoken while it
is written uses `speak_stream` -> a `SpeechStream`: text deltas are segmented incrementally
(`speech_text.Segmenter`) and each finished segment joins the ticket while the thinker goes on; a
thread of the stream publishes its audio on the chat's stream (running chunk index) and, at its end,
calls `then` (`workers.spoken_reply`, which writes the chat's DONE with the summary).
Ending early: a job registers its own abort with the `Aborter` (an `ExclusiveEnd`): the stage drops the
ticket at its next step; cancel and completion are exclusive, so the request ends exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipelines import speech_synthesis
from pipelines.media import FetchMedia
from pipelines.protocol import EventType, GenerateJob, SpeechOptions, Usage
from pipelines.speech_synthesis import SpeechLimits, SpeechSettings
from pipelines.speech_text import Segmenter
from workers.emitter import Control, Flight
from workers.job_end import ExclusiveEnd, JobDeadline
from workers.speech_output import SpeechOutlet, SpokenResult, speak
from workers.speech_stage import SpeechStage, SpeechTicket

if TYPE_CHECKING:
    from models.ming.speech.speech_model import SpeechModel
    from workers.config import WorkerConfig
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

StreamEnd = Callable[["SpokenResult | None", "BaseException | None"], None]  # a SpeechStream's end


def load_speech(runtime: WorkerRuntime, config: WorkerConfig) -> SpeechJobs | None:
    """The speech side of a worker whose checkpoint has a `talker/` folder (else None)."""
    from models.ming.speech.speech_model import SpeechModel

    model = SpeechModel.load(config.model_dir, runtime.engine.device, runtime.engine.dtype)
    if model is None:
        return None
    limits = SpeechLimits(
        max_text_chars=config.max_speech_text_chars,
        max_audio_seconds=config.max_speech_seconds,
        min_clip_seconds=config.min_speaker_clip_seconds,
        max_clip_seconds=config.max_speaker_clip_seconds,
        max_clip_bytes=config.max_speaker_clip_bytes,
    )
    return SpeechJobs(runtime, model, limits, fetch=runtime._media_bytes)


class SpeechJobs:
    def __init__(
        self,
        runtime: WorkerRuntime,
        model: SpeechModel,
        limits: SpeechLimits,
        fetch: FetchMedia | None = None,
    ) -> None:
        self.runtime, self.model, self.limits, self.fetch = runtime, model, limits, fetch
        self.stage = SpeechStage(model, runtime.metrics.speech_forward)

    def start(self) -> None:
        self.stage.start(self.runtime.engine)  # its steps share the engine's thread

    def stop(self) -> None:
        self.stage.stop()

    def in_flight(self) -> int:
        """Speech requests in the stage now."""
        return len(self.stage)

    @property
    def voices(self) -> tuple[str, ...]:
        """The model's voice presets, the default first."""
        return self.model.voice_names

    # ---- a speech job ------------------------------------------------------------------------------
    def run(self, job: GenerateJob, flight: Flight) -> None:
        """Serve one speech job (task thread); RequestError for a client mistake (the caller reports
        it), RuntimeError when the talker failed."""
        rt, rid = self.runtime, job.request_id
        plan = speech_synthesis.plan(job, self.model, self.limits, self.fetch)
        abort = ExclusiveEnd(self.stage.wake)  # the stage drops the ticket at its next sweep
        rt.aborter.register(rid, abort)
        try:
            with flight.lock:
                if flight.stopping:
                    return
                flight.added = True  # from here on, ending it early goes through `abort`
            ticket, outlet = self._open(rid, plan.settings, lambda: abort.cancelled)
            for text in plan.segments:
                self.stage.add(ticket, text)
            self.stage.close(ticket)
            deadline = JobDeadline(rt, job, flight)
            try:
                result = speak(ticket, self.model, outlet, waiting=deadline.check)
            finally:
                _abandon(ticket, self.stage)
            if result is not None and abort.complete():
                self._done(rid, result, outlet)
        finally:
            rt.aborter.unregister(rid)

    def _open(self, rid: str, settings: SpeechSettings, cancelled) -> tuple[SpeechTicket, SpeechOutlet]:
        """A ticket in the stage and the outlet that publishes its audio."""
        t0, metrics = time.monotonic(), self.runtime.metrics
        ticket = self.stage.submit(rid, settings, cancelled)
        outlet = SpeechOutlet(
            rid,
            self.runtime.redis,
            self.runtime.emitter,
            settings,
            self.model.sample_rate,
            allowed=lambda: not cancelled(),
            on_first=lambda: metrics.speech_first_audio(time.monotonic() - t0),
        )
        return ticket, outlet

    def _done(self, rid: str, result: SpokenResult, outlet: SpeechOutlet) -> None:
        self.runtime.metrics.speech_done(outlet.seconds)
        usage = Usage(
            prompt_tokens=result.prompt_tokens, completion_tokens=result.patches, forwards=result.patches
        )
        fields = {
            "finish_reason": result.finish_reason,
            "usage": usage,
            "info": {"speech": result.summary.to_info()},
        }
        self.runtime.emitter.put(Control(rid, EventType.DONE, fields))

    # ---- a chat reply, spoken while it is written ----------------------------------------------------
    def speak_stream(
        self, request_id: str, flight: Flight, options: SpeechOptions, then: StreamEnd | None = None
    ) -> SpeechStream:
        """Start speaking the reply of chat request `request_id`; RequestError for bad options. The
        stream stops with the flight (cancel, deadline, shutdown, its terminal event) or on `cancel()`;
        `then(result, error)` is called from the stream's thread once it is over."""
        settings = speech_synthesis.settings(options, self.model, self.limits)
        return SpeechStream(self, request_id, flight, settings, then)


class SpeechStream:
    """One chat reply being spoken: `feed(delta)` and `finish()` from the thread that writes the reply,
    `wait()` from anywhere. Its audio is published by a thread of its own."""

    def __init__(
        self,
        jobs: SpeechJobs,
        request_id: str,
        flight: Flight,
        settings: SpeechSettings,
        then: StreamEnd | None = None,
    ) -> None:
        self._jobs, self._stage, self._then = jobs, jobs.stage, then
        self._segmenter = Segmenter()
        self._cancel = threading.Event()
        self.ticket, self.outlet = jobs._open(
            request_id, settings, lambda: self._cancel.is_set() or flight.stopping or flight.finished
        )
        self.result: SpokenResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._publish, name=f"bailing-speech-{request_id}", daemon=True
        )
        self._thread.start()

    def feed(self, delta: str) -> None:
        """More reply text; finished segments start speaking now."""
        for text in self._segmenter.feed(delta):
            self._stage.add(self.ticket, text)

    def finish(self) -> None:
        """The reply is complete: its tail is spoken and the stream ends after it."""
        for text in self._segmenter.flush():
            self._stage.add(self.ticket, text)
        self._stage.close(self.ticket)

    def cancel(self) -> None:
        self._cancel.set()
        self._stage.wake()

    @property
    def done(self) -> bool:
        """All its audio is published (or it stopped, or failed)."""
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> SpokenResult | None:
        """The result once all audio is published (None: stopped, or not `done` at `timeout`);
        raises RuntimeError if the talker failed."""
        self._thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"speaking the reply failed: {self.error}") from self.error
        return self.result

    def _publish(self) -> None:
        try:
            self.result = speak(self.ticket, self._jobs.model, self.outlet)
            if self.result is not None:
                self._jobs.runtime.metrics.speech_done(self.outlet.seconds)
        except Exception as exc:  # reported through wait()
            log.exception("request %s: speaking the reply failed", self.ticket.request_id)
            self.error = exc
        finally:
            _abandon(self.ticket, self._stage)
        if self._then is not None:
            try:
                self._then(self.result, self.error)
            except Exception:
                log.exception("request %s: the end of its speech stream failed", self.ticket.request_id)


def _abandon(ticket: SpeechTicket, stage: SpeechStage) -> None:
    """Its reader is leaving: the stage drops the ticket if it still runs."""
    if not ticket.done.is_set():
        ticket.abandoned.set()
        stage.wake()
