"""SpokenReply: a chat reply (task "generate" with `speech` options) that is spoken while it is written.

Flow: the task thread opens a `SpeechStream` before it adds the chat request to the engine and puts a
`SpokenReply` on the flight (`Flight.reply`); the emitter thread feeds it the reply's text deltas
(choice 0, not the reasoning) as it writes them, and at the text's end hands it the DONE fields
instead of writing DONE (`end`): the stream speaks the tail, and the stream's own thread, once the
last chunk is published, queues DONE with `info["speech"]` (the summary; usage stays the text's).
Ending early: the reply is the request's abort in the `Aborter` (registered by the task thread):
it aborts the engine request (a no-op once the text is complete) and stops the stream. Abort and
completion are exclusive, so the request ends exactly once, whichever comes first. A failed talker
ends the request ERROR INTERNAL at once; speech cut by the audio budget (`--max-speech-seconds`)
ends early and DONE then follows the text.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from engine.engine import LLMEngine
from pipelines.protocol import ErrorCode, EventType
from workers.emitter import Control, Emitter
from workers.job_end import ExclusiveEnd

if TYPE_CHECKING:  # the speech side is imported only by workers that speak (WorkerRuntime)
    from workers.speech_jobs import SpeechStream
    from workers.speech_output import SpokenResult

log = logging.getLogger(__name__)


class SpokenReply:
    def __init__(self, request_id: str, engine: LLMEngine, emitter: Emitter) -> None:
        self.request_id = request_id
        self._engine, self._emitter = engine, emitter
        self.end_early = ExclusiveEnd(self._stop_both)  # what the Aborter calls
        self._lock = threading.Lock()  # orders the text's end against the speech's
        self._done_fields: dict[str, Any] | None = None
        self._spoken_early: SpokenResult | None = None
        self.stream: SpeechStream | None = None

    def start(self, stream: SpeechStream) -> None:
        """Speak into `stream` (opened with `then=self.spoken`)."""
        self.stream = stream

    # ---- the emitter thread ------------------------------------------------------------------------
    def feed(self, text: str) -> None:
        """More reply text (choice 0)."""
        if text and self.stream is not None:
            self.stream.feed(text)

    def end(self, done_fields: dict[str, Any]) -> None:
        """The text is complete: DONE (these fields) follows once its speech is published."""
        with self._lock:
            self._done_fields, early = done_fields, self._spoken_early
        if early is not None:  # the audio budget ended the speech before the text
            self._done(early)
        elif self.stream is not None:
            self.stream.finish()

    def stop(self) -> None:
        """The request ended otherwise (an engine error, never added): stop speaking."""
        if self.stream is not None:
            self.stream.cancel()

    def _stop_both(self) -> None:
        self._engine.abort(self.request_id)  # False once the text is complete: nothing to free then
        self.stop()

    # ---- the stream's thread, once its audio is out ---------------------------------------------------
    def spoken(self, result: SpokenResult | None, error: BaseException | None) -> None:
        if error is not None:  # the talker failed: the request ends now, text or not
            if self.end_early.complete():
                self._engine.abort(self.request_id)
                kind = type(error).__name__
                message = f"internal error while speaking the reply ({kind}); see the worker log"
                fields = {"error_code": ErrorCode.INTERNAL, "message": message}
                self._emitter.put(Control(self.request_id, EventType.ERROR, fields))
            return
        if result is None:
            return  # stopped: whoever stopped it writes the terminal event
        with self._lock:
            if self._done_fields is None:  # cut by the audio budget while the text goes on
                self._spoken_early = result
                return
        self._done(result)

    def _done(self, result: SpokenResult) -> None:
        if not self.end_early.complete():
            return  # aborted first: its terminal event is the Aborter's
        fields = dict(self._done_fields or {})
        fields["info"] = {**(fields.get("info") or {}), "speech": result.summary.to_info()}
        self._emitter.put(Control(self.request_id, EventType.DONE, fields))
