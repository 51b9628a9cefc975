"""The speech RPCs of the InferenceServicer (mixed into it): SynthesizeSpeech, SynthesizeSpeechStream, and
Generate / GenerateStream calls whose reply is also spoken (GenerateRequest.speech set).

Each goes the servicer's way for media replies (`_collected` / `_relayed`: admit -> validate ->
submit, cancel whenever the call ends without its terminal event, the request's events traced);
`gateway.speech` builds the job, `gateway.speech_reply` turns the events into replies, taking each
chunk's bytes out of Redis with `Dispatcher.take`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gateway.speech import chat_request_to_job, speech_request_to_job
from gateway.speech_reply import (
    SpeechReply,
    collect_speech,
    collect_spoken_reply,
    relay_speech,
    relay_spoken_reply,
)


class SpeechRPCs:
    """Needs the servicer's `_collected` and `_relayed` (see gateway/server.py)."""

    _collected: Any
    _relayed: Any

    async def SynthesizeSpeech(self, request, context):
        return await self._collected(
            request, context, "SynthesizeSpeech", speech_request_to_job, SpeechReply, collect_speech
        )

    async def SynthesizeSpeechStream(self, request, context):
        relay = self._relayed(
            request, context, "SynthesizeSpeechStream", speech_request_to_job, SpeechReply, relay_speech
        )
        async with contextlib.aclosing(relay) as chunks:
            async for chunk in chunks:
                yield chunk

    async def spoken_answer(self, request, context):
        """Generate with `speech`: the answer and the whole clip in one GenerateResponse."""
        return await self._collected(
            request, context, "Generate", chat_request_to_job, SpeechReply, collect_spoken_reply
        )

    def spoken_relay(self, request, context) -> AsyncIterator[Any]:
        """GenerateStream with `speech`: text deltas and audio chunks as they come."""
        return self._relayed(
            request, context, "GenerateStream", chat_request_to_job, SpeechReply, relay_spoken_reply
        )
