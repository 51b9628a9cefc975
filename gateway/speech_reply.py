"""The protobuf boundary of speech synthesis, reply side: a speech job's events -> SpeechChunks (stream)
or one SynthesizeSpeechResponse (unary); a spoken chat reply's events -> GenerateChunks with `audio`
(stream) or one GenerateResponse with `speech` (unary).

AUDIO events name the Redis key of their chunk's bytes (`audio_key`); `SpeechReply` takes them (GET +
DEL) as the events arrive, checking key, order and size; the terminal event's info["speech"] is a
`SpeechSummary`. A whole clip is the chunks assembled (`pipelines.audio_files.assemble`). Error terminals map
as Generate's (`replies.event_error`); a plain cancel ends a speech call with CANCELLED and a chat
reply with finish_reason "cancelled" (and the audio that came).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from gateway.api import pb
from gateway.errors import Rejection
from gateway.replies import ResponseBuilder, event_error, event_to_chunks
from gateway.state import RequestTrace
from pipelines.audio_files import assemble, mime_type
from pipelines.protocol import AudioChunkInfo, Event, EventType, GenerateJob, SpeechSummary, audio_key

TakeAudio = Callable[[str], Awaitable[bytes | None]]  # audio key -> its bytes (then gone), None if absent


def _internal(message: str) -> Rejection:
    return Rejection(grpc.StatusCode.INTERNAL, message)


def speech_error(event: Event) -> Rejection | None:
    """The status a terminal event ends a speech call with (None: DONE, the clip is there)."""
    error = event_error(event)
    if error is None and event.type is EventType.CANCELLED:
        return Rejection(grpc.StatusCode.CANCELLED, event.message or "the request was cancelled")
    return error


def too_big(size: int, max_bytes: int, stream_rpc: str) -> Rejection:
    return Rejection(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the audio reply is {size} bytes or more, over the gateway's max_message_bytes ({max_bytes}): "
        f"use {stream_rpc} (one chunk per message), a compact format (opus) or shorter text",
    )


class SpeechReply:
    """One job's AUDIO events turned into SpeechChunks (bytes taken with `take`) and its summary."""

    def __init__(self, job: GenerateJob, take: TakeAudio) -> None:
        self.job = job
        self._take = take
        self.chunks = 0  # audio chunks taken so far
        self.sample_rate = 0  # theirs
        self.duration_s = 0.0

    async def chunk(self, event: Event) -> pb.SpeechChunk:
        """The chunk an AUDIO event announces, with its bytes (removed from Redis)."""
        rid = self.job.request_id
        try:
            info = AudioChunkInfo.from_info(event.info or {})
        except (KeyError, TypeError) as exc:
            raise _internal(f"the worker sent a malformed audio event for request {rid} ({exc})") from None
        if info.key != audio_key(rid, info.index):  # never read (and delete) a key of anything else
            raise _internal(f"audio chunk {info.index} of request {rid} names the wrong key {info.key!r}")
        if info.index != self.chunks:
            raise _internal(f"request {rid}: audio chunk {info.index} came when chunk {self.chunks} was due")
        if self.sample_rate and info.sample_rate != self.sample_rate:
            raise _internal(
                f"request {rid}: audio chunk {info.index} is at {info.sample_rate} Hz, "
                f"the chunks before it at {self.sample_rate} Hz"
            )
        data = await self._take(info.key)
        if data is None:
            raise _internal(
                f"audio chunk {info.index} of request {rid} is missing from Redis "
                f"(key {info.key}: never written, or expired)"
            )
        if len(data) != info.size:
            raise _internal(
                f"audio chunk {info.index} of request {rid} is {len(data)} bytes, its event said {info.size}"
            )
        self.chunks, self.sample_rate = self.chunks + 1, info.sample_rate
        self.duration_s += info.duration_s
        return pb.SpeechChunk(
            request_id=rid,
            index=info.index,
            audio=data,
            sample_rate=info.sample_rate,
            start_s=info.start_s,
            duration_s=info.duration_s,
            text=info.text,
        )

    def has_audio(self, event: Event) -> bool:
        """Whether a terminal event ends a clip worth reporting (a summary, or chunks that came)."""
        return bool(self.chunks or (event.info or {}).get("speech") is not None)

    def summary(self, event: Event) -> SpeechSummary:
        """The terminal event's SpeechSummary; a cancel without one: what the chunks that came say."""
        rid, raw = self.job.request_id, (event.info or {}).get("speech")
        if raw is None and event.type is EventType.CANCELLED:
            options = self.job.speech
            fmt = options.format if options else "wav"
            seed = options.seed if options and options.seed is not None else 0
            return SpeechSummary(self.sample_rate, self.duration_s, fmt, seed, self.chunks, 0)
        try:
            summary = SpeechSummary.from_info(raw)
        except (KeyError, TypeError) as exc:
            raise _internal(f"the done event of request {rid} has no speech summary ({exc})") from None
        if summary.chunks != self.chunks:
            raise _internal(
                f"request {rid}: the worker reported {summary.chunks} audio chunk(s) but sent {self.chunks}"
            )
        return summary

    def response(
        self, event: Event, trace: RequestTrace, chunks: list[bytes] | None = None
    ) -> pb.SynthesizeSpeechResponse:
        """The SynthesizeSpeechResponse of a terminal event: the summary, and (given the chunks' bytes)
        the whole clip."""
        s = self.summary(event)
        speech_job = self.job.task == "speech"  # a chat reply's prompt tokens are the response's
        cancelled = event.type is EventType.CANCELLED
        finish_reason = event.finish_reason or ("cancelled" if cancelled else "stop")
        return pb.SynthesizeSpeechResponse(
            request_id=self.job.request_id,
            model=self.job.model,
            audio=assemble(s.format, s.sample_rate, chunks) if chunks is not None else b"",
            mime_type=mime_type(s.format),
            format=s.format,
            sample_rate=s.sample_rate,
            duration_s=s.duration_s,
            seed=s.seed,
            finish_reason=finish_reason,
            usage=pb.SpeechUsage(
                prompt_tokens=event.usage.prompt_tokens if event.usage and speech_job else 0,
                latent_frames=s.latent_frames,
                chunks=s.chunks,
            ),
            timing=pb.Timing(
                queue_s=trace.queue_s, time_to_first_token_s=trace.ttfa_s, total_s=trace.total_s
            ),
        )

    def last(self, event: Event, trace: RequestTrace) -> pb.SpeechChunk:
        """A stream's last message: no audio, the summary."""
        summary = self.response(event, trace)
        return pb.SpeechChunk(
            request_id=self.job.request_id,
            index=self.chunks,
            sample_rate=summary.sample_rate,
            start_s=summary.duration_s,
            last=True,
            summary=summary,
        )


class _Collected:
    """The chunk payloads of a unary reply, refused once they outgrow the gRPC send limit."""

    def __init__(self, max_bytes: int, stream_rpc: str) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.max_bytes, self.stream_rpc = max_bytes, stream_rpc

    def add(self, chunk: pb.SpeechChunk) -> None:
        self.pieces.append(chunk.audio)
        self.size += len(chunk.audio)
        if self.size > self.max_bytes:  # refuse early rather than hold an unsendable clip
            raise too_big(self.size, self.max_bytes, self.stream_rpc)

    def check(self, response) -> None:
        if response.ByteSize() > self.max_bytes:
            raise too_big(response.ByteSize(), self.max_bytes, self.stream_rpc)


# ---- SynthesizeSpeech / SynthesizeSpeechStream -------------------------------------------------
async def collect_speech(
    events: AsyncIterator[Event], reply: SpeechReply, trace: RequestTrace, max_bytes: int
) -> pb.SynthesizeSpeechResponse:
    """The unary SynthesizeSpeechResponse: the whole clip as one file, then the summary."""
    collected, response = _Collected(max_bytes, "SynthesizeSpeechStream"), None
    async for event in events:
        if event.type is EventType.AUDIO:
            collected.add(await reply.chunk(event))
        elif event.terminal:
            error = speech_error(event)
            if error is not None:
                raise error
            response = reply.response(event, trace, collected.pieces)
    if response is None:  # ended without a terminal: being cancelled
        raise Rejection(grpc.StatusCode.CANCELLED, "the request ended before its audio was done")
    collected.check(response)
    return response


async def relay_speech(
    events: AsyncIterator[Event], reply: SpeechReply, trace: RequestTrace
) -> AsyncIterator[pb.SpeechChunk]:
    """The stream: one SpeechChunk per AUDIO event as it arrives, then the last (the summary)."""
    async for event in events:
        if event.type is EventType.AUDIO:
            yield await reply.chunk(event)
        elif event.terminal:
            error = speech_error(event)
            if error is not None:
                raise error
            yield reply.last(event, trace)


# ---- spoken chat replies (Generate / GenerateStream with speech) --------------------------------
async def collect_spoken_reply(
    events: AsyncIterator[Event], reply: SpeechReply, trace: RequestTrace, max_bytes: int
) -> pb.GenerateResponse:
    """The unary GenerateResponse (as `replies.ResponseBuilder` makes it) with the whole clip in `speech`."""
    builder = ResponseBuilder(reply.job.request_id, reply.job.model)
    collected, last = _Collected(max_bytes, "GenerateStream"), None
    async for event in events:
        if event.type is EventType.AUDIO:
            collected.add(await reply.chunk(event))
            continue
        builder.add(event)  # raises the Rejection of an error terminal
        if event.terminal:
            last = event
    response = builder.build(trace)
    if last is not None and reply.has_audio(last):
        response.speech.CopyFrom(reply.response(last, trace, collected.pieces))
    collected.check(response)
    return response


async def relay_spoken_reply(
    events: AsyncIterator[Event], reply: SpeechReply, trace: RequestTrace
) -> AsyncIterator[pb.GenerateChunk]:
    """Text deltas as `replies.event_to_chunks` makes them, each audio chunk in a GenerateChunk of its
    own, and the audio's last message on the last chunk (the one with usage)."""
    rid = reply.job.request_id
    async for event in events:
        if event.type is EventType.AUDIO:
            yield pb.GenerateChunk(request_id=rid, audio=await reply.chunk(event))
            continue
        chunks = event_to_chunks(rid, event)  # raises the Rejection of an error terminal
        if event.terminal and chunks and reply.has_audio(event):
            chunks[-1].audio.CopyFrom(reply.last(event, trace))
        for chunk in chunks:
            yield chunk
