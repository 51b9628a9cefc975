"""The speech RPCs of the InferenceServicer (mixed into it): SynthesizeSpeech, SynthesizeSpeechStream, and
Generate / GenerateStream calls whose reply is also spoken (GenerateRequest.speech set).

Each goes the servicer's way (`_call`: admit -> validate -> submit, cancel whenever the call ends
without its terminal event; `_events`: the request's events, traced for metrics and the log line);
`gateway.speech` builds the job, `gateway.speech_reply` turns the events into replies, taking each
chunk's bytes out of Redis with `Dispatcher.take`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher
from gateway.speech import chat_request_to_job, speech_request_to_job
from gateway.speech_reply import (
    SpeechReply,
    collect_speech,
    collect_spoken_reply,
    relay_speech,
    relay_spoken_reply,
)


class SpeechRPCs:
    """Needs the servicer's `cfg`, `dispatcher`, `_call` and `_events` (see gateway/server.py)."""

    cfg: GatewayConfig
    dispatcher: Dispatcher
    _call: Any
    _events: Any

    async def SynthesizeSpeech(self, request, context):
        async with (
            self._call(request, context, "SynthesizeSpeech", speech_request_to_job) as call,
            contextlib.aclosing(self._events(call, context)) as events,
        ):
            reply = SpeechReply(call.job, self.dispatcher.take)
            return await collect_speech(events, reply, call.trace, self.cfg.max_message_bytes)

    async def SynthesizeSpeechStream(self, request, context):
        async with (
            self._call(request, context, "SynthesizeSpeechStream", speech_request_to_job) as call,
            contextlib.aclosing(self._events(call, context)) as events,
            contextlib.aclosing(
                relay_speech(events, SpeechReply(call.job, self.dispatcher.take), call.trace)
            ) as chunks,
        ):
            async for chunk in chunks:
                yield chunk

    async def spoken_answer(self, request, context):
        """Generate with `speech`: the answer and the whole clip in one GenerateResponse."""
        async with (
            self._call(request, context, "Generate", chat_request_to_job) as call,
            contextlib.aclosing(self._events(call, context)) as events,
        ):
            reply = SpeechReply(call.job, self.dispatcher.take)
            return await collect_spoken_reply(events, reply, call.trace, self.cfg.max_message_bytes)

    async def spoken_relay(self, request, context) -> AsyncIterator[Any]:
        """GenerateStream with `speech`: text deltas and audio chunks as they come."""
        async with (
            self._call(request, context, "GenerateStream", chat_request_to_job) as call,
            contextlib.aclosing(self._events(call, context)) as events,
            contextlib.aclosing(
                relay_spoken_reply(events, SpeechReply(call.job, self.dispatcher.take), call.trace)
            ) as chunks,
        ):
            async for chunk in chunks:
                yield chunk
