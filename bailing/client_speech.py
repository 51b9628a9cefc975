"""The client's speech synthesis: `synthesize_speech` / `synthesize_speech_stream` (mixed into `Client` and
`AsyncClient`), their data, its bailing.v1 conversion, and the audio of spoken chat replies.

Flow: text + options (a speaker clip to clone as bytes or a path) -> `build_speech_request` ->
`SynthesizeSpeechRequest`; `SynthesizeSpeechResponse` -> `SpeechResult` (the whole clip as one file);
a stream's `SpeechChunk`s -> `AudioChunk`s (raw PCM for wav and pcm, Ogg pages for opus), the last
one with `last` set and the summary. A chat request with `speech=` gets a `Completion` whose `speech`
is the clip, or `Chunk`s whose `audio` is an `AudioChunk` (`bailing.client_speech_file` writes them).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

from bailing.client_convert import (
    Chunk,
    Completion,
    Timing,
    chunk_from_pb,
    completion_from_pb,
    invalid_argument,
    media_part,
)
from bailing.client_streams import AsyncChunkStream, ChunkStream
from gateway.api import pb


# ---- data -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechUsage:
    prompt_tokens: int = 0  # tokens of the text the talker read (0 for a spoken chat reply)
    latent_frames: int = 0  # talker latent frames generated
    chunks: int = 0  # audio chunks the clip was streamed in


@dataclass(frozen=True)
class SpeechResult:
    """A finished clip: `audio` is a complete file of `format` (wav, pcm = raw s16le mono, opus = Ogg
    Opus); empty in a stream's summary, whose audio came as chunks."""

    request_id: str
    model: str
    audio: bytes
    mime_type: str
    format: str
    sample_rate: int
    duration_s: float
    seed: int  # same seed + same request = same audio
    usage: SpeechUsage
    timing: Timing  # time_to_first_token_s: gateway accept -> first audio chunk
    finish_reason: str = "stop"  # or "length": the model's audio limit cut the text short

    def save(self, path: str | os.PathLike) -> Path:
        """Write the file to `path`; returns it."""
        out = Path(path)
        out.write_bytes(self.audio)
        return out


@dataclass(frozen=True)
class AudioChunk:
    """A piece of a streamed clip: raw s16le mono PCM (wav and pcm requests: no WAV header) or Ogg
    pages (opus). The last chunk of a stream has no audio, `last` True and the `summary`."""

    request_id: str
    index: int  # 0, 1, ... (the last: the number of audio chunks)
    audio: bytes
    sample_rate: int
    start_s: float
    duration_s: float
    text: str = ""  # the text segment it speaks
    last: bool = False
    summary: SpeechResult | None = None


class SpeechRequestOptions(TypedDict, total=False):
    """Keyword options of `synthesize_speech` / `synthesize_speech_stream` (see `build_speech_request`)."""

    voice: str | None
    speaker_audio: bytes | str | os.PathLike | None
    speaker_audio_mime_type: str | None
    speaker_text: str | None
    speed: float | None
    sample_rate: int | None
    format: str
    seed: int | None
    temperature: float | None
    guidance_scale: float | None
    instruction: str | None
    request_id: str | None
    priority: int


# ---- request ----------------------------------------------------------------------------------
def build_speech_request(
    model: str,
    text: str,
    *,
    voice: str | None = None,
    speaker_audio: bytes | str | os.PathLike | None = None,
    speaker_audio_mime_type: str | None = None,
    speaker_text: str | None = None,
    speed: float | None = None,
    sample_rate: int | None = None,
    format: str = "wav",
    seed: int | None = None,
    temperature: float | None = None,
    guidance_scale: float | None = None,
    instruction: str | None = None,
    request_id: str | None = None,
    priority: int = 0,
) -> Any:
    """A `SynthesizeSpeechRequest`. Unset options take the model's defaults; `speaker_audio` (a clip
    of the voice to clone: its bytes or a file path) goes instead of `voice`."""
    if not isinstance(model, str) or not model:
        raise invalid_argument("model", "a model name is required")
    if not isinstance(text, str):
        raise invalid_argument("text", f"a string is required, got {type(text).__name__}")
    request = pb.SynthesizeSpeechRequest(
        model=model,
        text=text,
        voice=voice or "",
        speaker_text=speaker_text or "",
        format=format or "",
        instruction=instruction or "",
        request_id=request_id or "",
        priority=priority,
    )
    optional = {
        "speed": speed,
        "sample_rate": sample_rate,
        "seed": seed,
        "temperature": temperature,
        "guidance_scale": guidance_scale,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(request, name, value)
    if speaker_audio is not None:
        request.speaker_audio.CopyFrom(_clip(speaker_audio, speaker_audio_mime_type))
    return request


def _clip(audio: bytes | str | os.PathLike, mime_type: str | None) -> Any:
    if isinstance(audio, bytes | bytearray | memoryview):
        source: dict[str, Any] = {"data": bytes(audio)}
    elif isinstance(audio, str | os.PathLike):
        source = {"path": audio}
    else:
        raise invalid_argument(
            "speaker_audio", f"bytes or a file path is required, got {type(audio).__name__}"
        )
    return media_part("audio", {**source, "mime_type": mime_type}, "speaker_audio").audio


# ---- replies ----------------------------------------------------------------------------------
def speech_result_from_pb(msg: Any) -> SpeechResult:
    u, t = msg.usage, msg.timing
    return SpeechResult(
        request_id=msg.request_id,
        model=msg.model,
        audio=msg.audio,
        mime_type=msg.mime_type,
        format=msg.format,
        sample_rate=msg.sample_rate,
        duration_s=msg.duration_s,
        seed=msg.seed,
        usage=SpeechUsage(u.prompt_tokens, u.latent_frames, u.chunks),
        timing=Timing(t.queue_s, t.time_to_first_token_s, t.total_s),
        finish_reason=msg.finish_reason,
    )


def speech_result_to_pb(result: SpeechResult) -> Any:
    """The `SynthesizeSpeechResponse` a `SpeechResult` came from (for writing results as JSON)."""
    u, t = result.usage, result.timing
    return pb.SynthesizeSpeechResponse(
        request_id=result.request_id,
        model=result.model,
        audio=result.audio,
        mime_type=result.mime_type,
        format=result.format,
        sample_rate=result.sample_rate,
        duration_s=result.duration_s,
        seed=result.seed,
        usage=pb.SpeechUsage(prompt_tokens=u.prompt_tokens, latent_frames=u.latent_frames, chunks=u.chunks),
        timing=pb.Timing(queue_s=t.queue_s, time_to_first_token_s=t.time_to_first_token_s, total_s=t.total_s),
        finish_reason=result.finish_reason,
    )


def audio_chunk_from_pb(msg: Any) -> AudioChunk:
    summary = speech_result_from_pb(msg.summary) if msg.HasField("summary") else None
    return AudioChunk(
        msg.request_id,
        msg.index,
        msg.audio,
        msg.sample_rate,
        msg.start_s,
        msg.duration_s,
        msg.text,
        msg.last,
        summary,
    )


def completion_with_speech(msg: Any) -> Completion:
    """`completion_from_pb`, with the spoken reply's clip when the response has one."""
    completion = completion_from_pb(msg)
    if not msg.HasField("speech"):
        return completion
    return dataclasses.replace(completion, speech=speech_result_from_pb(msg.speech))


def chunk_with_audio(msg: Any) -> Chunk:
    """`chunk_from_pb`, with the spoken reply's audio when the chunk has some."""
    chunk = chunk_from_pb(msg)
    if not msg.HasField("audio"):
        return chunk
    return dataclasses.replace(chunk, audio=audio_chunk_from_pb(msg.audio))


# ---- the calls (mixed into Client / AsyncClient, which provide the stub and `_unary`) ------------
class SpeechCalls:
    _stub: Any
    _metadata: Any
    _unary: Callable[..., Any]
    _timeout: Callable[[float | None], float | None]

    def synthesize_speech(
        self, model: str, text: str, *, timeout: float | None = None, **options: Unpack[SpeechRequestOptions]
    ) -> SpeechResult:
        """Say `text` (in `voice`, or in the voice of `speaker_audio`); the whole clip as one file of
        `format`. `timeout` is the RPC deadline in seconds."""
        request = build_speech_request(model, text, **options)
        return speech_result_from_pb(self._unary(self._stub.SynthesizeSpeech, request, timeout))

    def synthesize_speech_stream(
        self, model: str, text: str, *, timeout: float | None = None, **options: Unpack[SpeechRequestOptions]
    ) -> ChunkStream:
        """The same request as `AudioChunk`s as they are decoded, ending with the last (the summary);
        close the stream to cancel."""
        request = build_speech_request(model, text, **options)
        deadline = self._timeout(timeout)
        call = self._stub.SynthesizeSpeechStream(request, timeout=deadline, metadata=self._metadata)
        return ChunkStream(call, audio_chunk_from_pb)


class AsyncSpeechCalls:
    _stub: Any
    _metadata: Any
    _unary: Callable[..., Any]
    _timeout: Callable[[float | None], float | None]

    async def synthesize_speech(
        self, model: str, text: str, *, timeout: float | None = None, **options: Unpack[SpeechRequestOptions]
    ) -> SpeechResult:
        request = build_speech_request(model, text, **options)
        return speech_result_from_pb(await self._unary(self._stub.SynthesizeSpeech, request, timeout))

    def synthesize_speech_stream(
        self, model: str, text: str, *, timeout: float | None = None, **options: Unpack[SpeechRequestOptions]
    ) -> AsyncChunkStream:
        request = build_speech_request(model, text, **options)
        deadline = self._timeout(timeout)
        call = self._stub.SynthesizeSpeechStream(request, timeout=deadline, metadata=self._metadata)
        return AsyncChunkStream(call, audio_chunk_from_pb)
