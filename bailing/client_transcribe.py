"""The data of the client's speech recognition (`Client.transcribe`) and its bailing.v1 conversion.

Flow: audio (bytes or a file path) + options -> `build_transcribe_request` -> `TranscribeRequest`;
`TranscribeResponse` -> `Transcription`. A streamed transcript arrives as the same `Chunk`s as a
streamed answer (text deltas; the last chunk carries finish_reason and usage).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bailing.client_convert import (
    SamplingOptions,
    Timing,
    Usage,
    invalid_argument,
    media_part,
    sampling_to_pb,
    usage_from_pb,
)
from gateway.api import pb

TranscribeOptions = SamplingOptions  # `transcribe` / `transcribe_stream` take the shared options


@dataclass(frozen=True)
class Transcription:
    """The transcript of one audio clip."""

    request_id: str
    model: str
    text: str
    finish_reason: str  # stop, length, cancelled, error
    usage: Usage
    timing: Timing


def build_transcribe_request(
    model: str,
    audio: bytes | str | os.PathLike,
    *,
    mime_type: str | None = None,
    stop: str | Iterable[str] | None = None,
    stop_token_ids: Iterable[int] | None = None,
    request_id: str | None = None,
    priority: int = 0,
    **sampling: Any,
) -> Any:
    """A `TranscribeRequest`: `audio` is the file's bytes or its path (str / PathLike); the mime
    type, when not given, is guessed from the file name, then from the bytes."""
    if not isinstance(model, str) or not model:
        raise invalid_argument("model", "a model name is required")
    if isinstance(audio, bytes | bytearray | memoryview):
        source: dict[str, Any] = {"data": bytes(audio)}
    elif isinstance(audio, str | os.PathLike):
        source = {"path": audio}
    else:
        raise invalid_argument("audio", f"bytes or a file path is required, got {type(audio).__name__}")
    part = media_part("audio", {**source, "mime_type": mime_type}, "audio")
    return pb.TranscribeRequest(
        model=model,
        audio=part.audio,
        sampling=sampling_to_pb(stop, stop_token_ids, sampling),
        request_id=request_id or "",
        priority=priority,
    )


def transcription_from_pb(msg: Any) -> Transcription:
    timing = Timing(msg.timing.queue_s, msg.timing.time_to_first_token_s, msg.timing.total_s)
    return Transcription(
        msg.request_id, msg.model, msg.text, msg.finish_reason, usage_from_pb(msg.usage), timing
    )
