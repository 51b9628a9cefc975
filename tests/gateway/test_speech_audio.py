"""Whole clips from their chunks (gateway/audio.py: WAV header + PCM, raw PCM, Ogg Opus pages), read back
with soundfile; `SpeechReply`'s checks of AUDIO events and summaries; the trace and metrics of audio
(no server: the bytes come from a dict standing in for Redis)."""

from __future__ import annotations

import asyncio
import struct

import grpc
import pytest

from gateway.errors import Rejection
from gateway.metrics import GatewayMetrics
from gateway.speech_reply import SpeechReply, speech_error
from gateway.state import RequestTrace
from pipelines.audio_files import WAV_HEADER_BYTES, assemble, mime_type, wav_header
from pipelines.protocol import (
    AudioChunkInfo,
    Event,
    EventType,
    GenerateJob,
    SpeechOptions,
    SpeechSummary,
    Usage,
    audio_key,
)
from tests.gateway.audio_data import opus_chunks, pcm_chunks, pcm_tone, read_audio


# ---- containers -------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100, 48000])
def test_wav_assembly_reads_back_at_the_stated_rate(rate):
    chunks = pcm_chunks(0.75, rate, 4)
    data = assemble("wav", rate, chunks)
    samples, got_rate = read_audio(data)
    assert got_rate == rate and len(samples) == round(0.75 * rate)
    assert samples.tobytes() == pcm_tone(0.75, rate) == b"".join(chunks)
    riff, size, wave, fmt, fmt_size, tag, channels, sr, byte_rate, align, bits, data_id, data_size = (
        struct.unpack_from("<4sI4s4sIHHIIHH4sI", data)
    )
    assert (riff, wave, fmt, data_id, tag, channels, bits, align) == (
        b"RIFF",
        b"WAVE",
        b"fmt ",
        b"data",
        1,
        1,
        16,
        2,
    )
    assert (sr, byte_rate, fmt_size) == (rate, 2 * rate, 16)
    assert (size, data_size) == (len(data) - 8, len(data) - WAV_HEADER_BYTES)


def test_an_empty_clip_is_a_valid_empty_wav():
    data = assemble("wav", 16000, [])
    assert len(data) == WAV_HEADER_BYTES
    samples, rate = read_audio(data)
    assert (len(samples), rate) == (0, 16000)


def test_wav_header_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="sample_rate must be > 0"):
        wav_header(0, 10)
    with pytest.raises(ValueError, match="data_bytes must be in"):
        wav_header(16000, 2**32)


def test_pcm_is_the_chunks_concatenated():
    chunks = pcm_chunks(0.2, 16000, 3)
    assert assemble("pcm", 16000, chunks) == pcm_tone(0.2, 16000)


def test_opus_pages_concatenate_to_the_ogg_opus_file():
    whole, chunks = opus_chunks(3.0, 16000, 3)
    assert all(c.startswith(b"OggS") for c in chunks) and len(chunks) == 3
    data = assemble("opus", 16000, chunks)
    assert data == whole
    samples, rate = read_audio(data)
    assert rate == 16000 and abs(len(samples) - 48000) <= 960  # 3 s (less the encoder's pre-skip)


def test_mime_types():
    assert [mime_type(f) for f in ("wav", "pcm", "opus")] == [
        "audio/wav",
        "audio/pcm",
        "audio/ogg;codecs=opus",
    ]
    with pytest.raises(ValueError, match="format must be one of wav, pcm, opus, got 'mp3'"):
        mime_type("mp3")


# ---- SpeechReply's checks -----------------------------------------------------------------------
RID = "tts-r1"
JOB = GenerateJob(RID, "ming2", prompt="hi", task="speech", speech=SpeechOptions(format="wav", seed=5))


def audio_event(index: int, data: bytes, **change) -> Event:
    info = AudioChunkInfo(
        index, audio_key(RID, index), 16000, 0.1 * index, len(data) / 32000, len(data)
    ).to_info()
    return Event(seq=index + 1, type=EventType.AUDIO, info={**info, **change})


def reply_with(store: dict[str, bytes]) -> SpeechReply:
    async def take(key: str) -> bytes | None:
        return store.pop(key, None)

    return SpeechReply(JOB, take)


def internal(coro_or_call) -> str:
    with pytest.raises(Rejection) as info:
        result = coro_or_call()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    assert info.value.code is grpc.StatusCode.INTERNAL
    return info.value.message


def test_chunks_are_taken_in_order_and_checked():
    store = {audio_key(RID, 0): b"\1\0" * 4, audio_key(RID, 1): b"\2\0" * 4}
    reply = reply_with(store)
    first = asyncio.run(reply.chunk(audio_event(0, b"\1\0" * 4)))
    assert (first.index, first.audio, first.sample_rate, first.request_id) == (0, b"\1\0" * 4, 16000, RID)
    assert (
        internal(lambda: reply.chunk(audio_event(2, b"x")))
        == f"request {RID}: audio chunk 2 came when chunk 1 was due"
    )
    assert internal(lambda: reply.chunk(audio_event(1, b"\2\0" * 4, sample_rate=8000))).endswith(
        "is at 8000 Hz, the chunks before it at 16000 Hz"
    )
    assert internal(lambda: reply.chunk(audio_event(1, b"\2\0" * 4, key="bailing:media:x"))) == (
        f"audio chunk 1 of request {RID} names the wrong key 'bailing:media:x'"
    )
    assert internal(lambda: reply.chunk(audio_event(1, b"\2\0" * 4, size=3))) == (
        f"audio chunk 1 of request {RID} is 8 bytes, its event said 3"
    )
    assert internal(lambda: reply.chunk(audio_event(1, b"\2\0" * 4))).startswith(
        f"audio chunk 1 of request {RID} is missing from Redis"  # the failed size check took it
    )
    bad = Event(seq=9, type=EventType.AUDIO, info={"index": 1})
    assert internal(lambda: reply.chunk(bad)).startswith(
        f"the worker sent a malformed audio event for request {RID}"
    )
    assert reply.chunks == 1 and store == {}


def test_an_empty_chunk_passes_through():
    reply = reply_with({audio_key(RID, 0): b""})  # an encoder may hold a whole chunk back
    chunk = asyncio.run(reply.chunk(audio_event(0, b"")))
    assert (chunk.index, chunk.audio, reply.chunks) == (0, b"", 1)


def test_the_summary_must_match_the_chunks():
    trace = RequestTrace(RID, "ming2", "SynthesizeSpeech", submitted_at=100.0)
    reply = reply_with({audio_key(RID, 0): b"ab"})
    asyncio.run(reply.chunk(audio_event(0, b"ab")))
    summary = SpeechSummary(16000, 0.5, "wav", 5, 1, 3).to_info()
    done = Event(seq=2, type=EventType.DONE, usage=Usage(prompt_tokens=4), info={"speech": summary})
    out = reply.response(done, trace, [b"ab"])
    assert (out.format, out.mime_type, out.sample_rate, out.duration_s, out.seed) == (
        "wav",
        "audio/wav",
        16000,
        0.5,
        5,
    )
    assert (out.usage.prompt_tokens, out.usage.latent_frames, out.usage.chunks) == (4, 3, 1)
    assert out.audio == wav_header(16000, 2) + b"ab" and out.finish_reason == "stop"
    cut = Event(seq=2, type=EventType.DONE, finish_reason="length", info={"speech": summary})
    assert reply.response(cut, trace).finish_reason == "length"  # the audio limit cut the text
    two = Event(seq=2, type=EventType.DONE, info={"speech": {**summary, "chunks": 2}})
    assert internal(lambda: reply.response(two, trace)) == (
        f"request {RID}: the worker reported 2 audio chunk(s) but sent 1"
    )
    bare = Event(seq=2, type=EventType.DONE, info={})
    assert internal(lambda: reply.response(bare, trace)).startswith(
        f"the done event of request {RID} has no speech"
    )
    cancelled = Event(seq=2, type=EventType.CANCELLED, finish_reason="cancelled")
    assert reply.summary(cancelled) == SpeechSummary(16000, 2 / 32000, "wav", 5, 1, 0)  # from what came
    assert speech_error(cancelled).code is grpc.StatusCode.CANCELLED
    error = Event(seq=2, type=EventType.ERROR, error_code="INVALID_ARGUMENT", message="voice 'x' is unknown")
    assert (speech_error(error).code, speech_error(error).message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "voice 'x' is unknown",
    )
    assert speech_error(done) is None


# ---- trace and metrics --------------------------------------------------------------------------
def test_audio_events_are_traced_and_counted():
    trace = RequestTrace(RID, "ming2", "SynthesizeSpeechStream", submitted_at=100.0)
    trace.observe(Event(seq=0, type=EventType.STARTED, worker_id="w", time=100.5))
    trace.observe(Event(seq=1, type=EventType.AUDIO, time=101.25, info={"duration_s": 0.5}))
    trace.observe(Event(seq=2, type=EventType.AUDIO, time=101.5, info={"duration_s": 0.75}))
    trace.observe(Event(seq=3, type=EventType.DONE, time=102.0))
    assert (trace.audio_chunks, trace.audio_s, trace.ttfa_s, trace.queue_s) == (2, 1.25, 1.25, 0.5)
    assert trace.first_token_at is None and trace.total_s == 2.0
    metrics = GatewayMetrics()
    metrics.observe_request(trace, 2.0)
    value = metrics.registry.get_sample_value
    assert value("bailing_gateway_audio_seconds_total", {"model": "ming2", "method": trace.method}) == 1.25
    assert value("bailing_gateway_time_to_first_audio_seconds_count", {"model": "ming2"}) == 1.0
    assert value("bailing_gateway_time_to_first_token_seconds_count", {"model": "ming2"}) is None
