"""The audio endpoints: `POST /v1/audio/transcriptions` (a multipart upload, over Transcribe and
TranscribeStream) and `POST /v1/audio/speech` (JSON, over SynthesizeSpeech and SynthesizeSpeechStream).

Transcriptions: `file` and `model` are required; `response_format` json (default: `{"text", "usage"}`)
or text (the transcript as text/plain); `temperature`; `stream=true` sends OpenAI's
`transcript.text.delta` events and one `transcript.text.done`. What the model cannot give (segment or
word timestamps: verbose_json, srt, vtt; a language hint; a prompt) is refused by name.

Speech: `input`, `voice` (one of the model's presets, listed by /v1/models), `response_format` wav
(the default here: OpenAI's mp3 and aac are not encoded), pcm or opus, `speed`, `instructions`, and
`stream_format=sse` for OpenAI's `speech.audio.delta` events (base64 audio) and one `speech.audio.done`.
Without it the reply is the whole file, with the sample rate, duration and seed in `x-bailing-*` headers.
"""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.api import pb
from gateway.http_api.calls import (
    EventStream,
    HttpCalls,
    bool_field,
    event_frames,
    number_field,
    text_field,
    upload,
)
from gateway.http_api.errors import bad_request
from gateway.http_api.fields import Fields
from gateway.http_api.replies import sse

TRANSCRIPT_FORMATS = ("json", "text")
SPEECH_FORMATS = ("wav", "pcm", "opus")


class AudioRoutes:
    def __init__(self, calls: HttpCalls, servicer: Any) -> None:
        self.calls, self.servicer = calls, servicer

    def routes(self) -> list[Route]:
        return [
            Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
            Route("/v1/audio/speech", self.speech, methods=["POST"]),
        ]

    # ---- transcriptions -----------------------------------------------------------------------
    async def transcriptions(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        form = await self.calls.form(request)
        for key in ("language", "prompt", "timestamp_granularities[]", "include[]", "chunking_strategy"):
            if form.get(key) not in (None, ""):
                raise bad_request(f"{key} is not supported by this server's transcription", key)
        audio = await upload(form, "file")
        model = text_field(form, "model")
        if not model:
            raise bad_request("model is required", "model")
        fmt = text_field(form, "response_format", "json")
        if fmt not in TRANSCRIPT_FORMATS:
            why = "timestamps are not produced" if fmt in ("verbose_json", "srt", "vtt") else "unknown"
            raise bad_request(
                f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}, got {fmt!r:.40} ({why})",
                "response_format",
            )
        req = pb.TranscribeRequest(model=model, audio=pb.Media(data=audio.data, mime_type=audio.content_type))
        temperature = number_field(form, "temperature", float)
        if temperature is not None:
            req.sampling.temperature = temperature
        if bool_field(form, "stream"):
            chunks = self.servicer.TranscribeStream(req, ctx)
            first = await self.calls.first(request, ctx, chunks)
            return EventStream(event_frames(chunks, first, ctx, TranscriptEvents()))
        reply = await self.calls.unary(request, ctx, self.servicer.Transcribe(req, ctx))
        if fmt == "text":
            return PlainTextResponse(reply.text)
        return JSONResponse({"text": reply.text, "usage": _transcript_usage(reply.usage)})

    # ---- speech -------------------------------------------------------------------------------
    async def speech(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        req, sse_stream = speech_request(await self.calls.json(request))
        if sse_stream:
            chunks = self.servicer.SynthesizeSpeechStream(req, ctx)
            first = await self.calls.first(request, ctx, chunks)
            return EventStream(event_frames(chunks, first, ctx, speech_events))
        reply = await self.calls.unary(request, ctx, self.servicer.SynthesizeSpeech(req, ctx))
        headers = {
            "x-bailing-sample-rate": str(reply.sample_rate),
            "x-bailing-duration-s": f"{reply.duration_s:.3f}",
            "x-bailing-seed": str(reply.seed),
            "x-bailing-finish-reason": reply.finish_reason,
        }
        return Response(reply.audio, media_type=reply.mime_type, headers=headers)


def speech_request(body: dict[str, Any]) -> tuple[pb.SynthesizeSpeechRequest, bool]:
    """(the SynthesizeSpeechRequest, stream as SSE?) of a /v1/audio/speech body."""
    f = Fields(body)
    fmt = f.get("response_format", str, default="wav")
    if fmt not in SPEECH_FORMATS:
        raise bad_request(
            f"response_format must be one of {', '.join(SPEECH_FORMATS)}, got {fmt!r:.40}", "response_format"
        )
    stream_format = f.get("stream_format", str, default="audio")
    if stream_format not in ("audio", "sse"):
        raise bad_request(f"stream_format must be audio or sse, got {stream_format!r:.40}", "stream_format")
    req = pb.SynthesizeSpeechRequest(
        model=f.require("model", str),
        text=f.require("input", str),
        voice=f.get("voice", str, default=""),
        format=fmt,
        instruction=f.get("instructions", str, default=""),
        request_id=f.get("request_id", str, default=""),
        priority=f.get("priority", int, default=0),
    )
    for key, field in (
        ("speed", "speed"),
        ("temperature", "temperature"),
        ("guidance_scale", "guidance_scale"),
    ):
        value = f.get(key, float)
        if value is not None:
            setattr(req, field, value)
    for key in ("seed", "sample_rate"):
        value = f.get(key, int)
        if value is not None:
            setattr(req, key, value)
    return req, stream_format == "sse"


def _transcript_usage(u: pb.Usage) -> dict[str, Any]:
    return {
        "type": "tokens",
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


class TranscriptEvents:
    """`transcript.text.delta` per text delta, then `transcript.text.done` with the whole text."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def __call__(self, chunk: pb.GenerateChunk) -> list[bytes]:
        out = []
        if chunk.text:
            self.text.append(chunk.text)
            out.append(sse({"type": "transcript.text.delta", "delta": chunk.text}))
        if chunk.HasField("usage"):
            done = {"type": "transcript.text.done", "text": "".join(self.text)}
            out.append(sse({**done, "usage": _transcript_usage(chunk.usage)}))
        return out


def speech_events(chunk: pb.SpeechChunk) -> list[bytes]:
    """`speech.audio.delta` per audio chunk (base64), then `speech.audio.done` with the summary."""
    out = []
    if chunk.audio:
        out.append(sse({"type": "speech.audio.delta", "audio": base64.b64encode(chunk.audio).decode()}))
    if chunk.last:
        s = chunk.summary
        done = {
            "type": "speech.audio.done",
            "sample_rate": chunk.sample_rate or s.sample_rate,
            "format": s.format,
            "duration_s": s.duration_s,
            "seed": s.seed,
            "finish_reason": s.finish_reason,
            "usage": {"input_tokens": s.usage.prompt_tokens, "output_tokens": s.usage.latent_frames},
        }
        out.append(sse(done))
    return out
