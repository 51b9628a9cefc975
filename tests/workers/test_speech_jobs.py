"""Speech jobs through a real in-process WorkerRuntime (the tiny Ming golden thinker plus a tiny talker,
real Redis, no Celery): AUDIO events with their bytes parked in Redis, DONE with the speech summary,
the same request giving the same bytes, opus / resample / speed, bad input naming its field, cancel
and deadline within a step with exactly one terminal event, and the chat entry (`speak_stream`)."""

from __future__ import annotations

import dataclasses
import io
import threading
import time

import numpy as np
import pytest
import soundfile

from pipelines.audio_files import wav_header
from pipelines.protocol import (
    AudioChunkInfo,
    ChatMessage,
    ErrorCode,
    Event,
    EventType,
    GenerateJob,
    Part,
    Sampling,
    SpeechOptions,
    SpeechSummary,
    stream_key,
)
from tests.models.ming.ming_golden import TINY
from tests.models.ming.speech_checkpoint import write_speech_checkpoint
from tests.models.ming.speech_golden import available
from tests.workers.helpers import new_id, read_events
from workers.config import WorkerConfig
from workers.emitter import Control, Flight
from workers.runtime import WorkerRuntime

pytestmark = pytest.mark.skipif(not (available() and TINY.is_dir()), reason="Ming golden data missing")
TEXT = "今天天气很好，我们一起去公园散步吧。Hello there, how are you today?"


@pytest.fixture(scope="module")
def runtime(redis_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("ming-speaking") / "ming"
    root.mkdir()
    for path in TINY.iterdir():  # the tiny thinker, plus talker/
        (root / path.name).symlink_to(path)
    write_speech_checkpoint(root)
    rt = WorkerRuntime(WorkerConfig(redis_url, "ming", root, name=f"ming-speech-{new_id()[:6]}"))
    rt.start()
    yield rt
    rt.close()


def speech_job(rt, text: str = TEXT, deadline: float | None = None, **options) -> GenerateJob:
    options = {"seed": 11, "format": "pcm"} | options
    return GenerateJob(
        request_id=new_id(), model=rt.config.name, task="speech", speech=SpeechOptions(**options),
        messages=(ChatMessage("user", (Part("text", text=text),)),), deadline=deadline,
    )  # fmt: skip


def run(rt, job) -> threading.Thread:
    thread = threading.Thread(target=rt.run, args=(job,), daemon=True)
    thread.start()
    return thread


def stream(rds, rid: str) -> list[Event]:
    """Everything in the request's stream (after it ended)."""
    return [Event.decode(fields) for _, fields in rds.xrange(stream_key(rid))]


def finished(rds, rid: str) -> list[Event]:
    read_events(rds, rid)
    time.sleep(0.2)  # anything queued behind the terminal event would show up now
    events = stream(rds, rid)
    assert [e.seq for e in events] == list(range(len(events)))
    assert [e.terminal for e in events].count(True) == 1 and events[-1].terminal
    return events


def audio(rds, events: list[Event]) -> tuple[list[AudioChunkInfo], bytes]:
    infos = [AudioChunkInfo.from_info(e.info) for e in events if e.type == EventType.AUDIO]
    return infos, b"".join(rds.get(i.key) for i in infos)


def test_a_speech_job_streams_audio_chunks_then_done(runtime, rds):
    job = speech_job(runtime, format="wav")
    run(runtime, job)
    events = finished(rds, job.request_id)
    assert events[0].type == EventType.STARTED and events[-1].type == EventType.DONE
    infos, data = audio(rds, events)
    assert [i.index for i in infos] == list(range(len(infos))) and len(infos) > 2
    for info in infos:
        assert info.sample_rate == 16000 and info.size == len(rds.get(info.key)) == 2 * round(
            info.duration_s * 16000
        )
        assert 0 < rds.ttl(info.key) <= 3600
    starts = np.cumsum([0.0] + [i.duration_s for i in infos[:-1]])
    assert np.allclose([i.start_s for i in infos], starts)
    assert {i.text for i in infos} == {
        "今天天气很好，我们一起去公园散步吧。",
        "Hello there, how are you today?",
    }
    done = events[-1]
    summary = SpeechSummary.from_info(done.info["speech"])
    assert (summary.chunks, summary.seed, summary.format, summary.sample_rate) == (
        len(infos),
        11,
        "wav",
        16000,
    )
    assert summary.duration_s == pytest.approx(sum(i.duration_s for i in infos), abs=1e-5)
    assert done.finish_reason == "stop" and done.usage.completion_tokens * 4 == summary.latent_frames
    assert done.usage.prompt_tokens > 0
    clip, rate = soundfile.read(io.BytesIO(wav_header(16000, len(data)) + data))  # the unary reply
    assert rate == 16000 and clip.shape[0] == len(data) // 2


def test_the_same_request_gives_the_same_chunks(runtime, rds):
    jobs = [speech_job(runtime) for _ in range(3)]
    jobs[2] = speech_job(runtime, seed=12)
    for job in jobs:  # together: they share the talker's batches
        run(runtime, job)
    chunks = []
    for job in jobs:
        infos, _ = audio(rds, finished(rds, job.request_id))
        chunks.append([rds.get(i.key) for i in infos])
    assert [len(c) for c in chunks[0]] == [len(c) for c in chunks[1]]
    a, b = (np.frombuffer(b"".join(c), "<i2").astype(int) for c in chunks[:2])
    assert np.abs(a - b).max() <= 1  # batch neighbours change float rounding only (1e-5), not the chunks
    assert chunks[2] != chunks[0]


def test_opus_resampled_and_faster(runtime, rds):
    job = speech_job(runtime, format="opus", sample_rate=24000, speed=1.5)
    run(runtime, job)
    events = finished(rds, job.request_id)
    infos, data = audio(rds, events)
    assert data.startswith(b"OggS") and all(i.sample_rate == 24000 for i in infos)
    clip, rate = soundfile.read(io.BytesIO(data))
    summary = SpeechSummary.from_info(events[-1].info["speech"])
    assert rate == 24000 and clip.shape[0] / rate == pytest.approx(summary.duration_s, abs=0.02)
    spoken = summary.latent_frames * 128 / 16000  # the talker's audio at 1x
    assert summary.duration_s == pytest.approx(spoken / 1.5, rel=0.05)


@pytest.mark.parametrize(
    ("options", "field"),
    [({"voice": "nobody"}, "voice"), ({"format": "mp3"}, "format"), ({"speed": 3.0}, "speed")],
)
def test_bad_input_is_invalid_argument_naming_the_field(runtime, rds, options, field):
    job = speech_job(runtime, **options)
    run(runtime, job)
    events = finished(rds, job.request_id)
    assert events[-1].type == EventType.ERROR and events[-1].error_code == ErrorCode.INVALID_ARGUMENT
    assert field in events[-1].message


def test_cancel_ends_it_within_a_step_with_one_terminal(runtime, rds):
    job = speech_job(runtime, text=TEXT * 3)
    run(runtime, job)
    read_events(rds, job.request_id, until=lambda e: e.type == EventType.AUDIO)
    runtime.cancel(job.request_id, runtime.steps())
    events = finished(rds, job.request_id)
    assert events[-1].type == EventType.CANCELLED and events[-1].error_code == ErrorCode.CANCELLED
    deadline = time.monotonic() + 5
    while len(runtime.speech.stage) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runtime.speech.stage) == 0


def test_deadline_ends_it(runtime, rds):
    job = speech_job(runtime, text=TEXT * 3, deadline=time.time() + 0.3)
    run(runtime, job)
    events = finished(rds, job.request_id)
    assert events[-1].type == EventType.CANCELLED and events[-1].error_code == ErrorCode.DEADLINE_EXCEEDED


def test_cancel_racing_completion_ends_each_stream_once(runtime, rds):
    jobs = [speech_job(runtime, text="好的，谢谢你。") for _ in range(6)]
    for i, job in enumerate(jobs):
        run(runtime, job)
        time.sleep(0.05 * i)
        runtime.cancel(job.request_id, runtime.steps())
    for job in jobs:
        events = finished(rds, job.request_id)
        assert events[-1].type in (EventType.DONE, EventType.CANCELLED)


def test_chat_reply_spoken_while_written_equals_a_speech_job(runtime, rds):
    rid = new_id()
    flight = Flight(rid)
    runtime.flights.add(flight)
    runtime.emitter.put(Control(rid, EventType.STARTED, {"worker_id": "test"}))
    spoken = runtime.speech.speak_stream(rid, flight, SpeechOptions(seed=11, format="pcm"))
    for i in range(0, len(TEXT), 5):  # the reply arrives in deltas while the talker already speaks
        spoken.feed(TEXT[i : i + 5])
    spoken.finish()
    result = spoken.wait(60)
    assert result is not None and result.finish_reason == "stop"
    runtime.emitter.put(
        Control(rid, EventType.DONE, {"finish_reason": "stop", "info": {"speech": result.summary.to_info()}})
    )
    infos, data = audio(rds, finished(rds, rid))
    assert [i.index for i in infos] == list(range(result.summary.chunks))
    job = speech_job(runtime)  # the same text, seed and format as a speech job
    run(runtime, job)
    _, expected = audio(rds, finished(rds, job.request_id))
    a, b = np.frombuffer(data, "<i2").astype(int), np.frombuffer(expected, "<i2").astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_a_chat_stream_stops_with_its_flight(runtime, rds):
    rid = new_id()
    flight = Flight(rid)
    runtime.flights.add(flight)
    spoken = runtime.speech.speak_stream(rid, flight, SpeechOptions(seed=1))
    spoken.feed(TEXT * 2)
    flight.stopping = True  # what a cancel, deadline or shutdown sets
    assert spoken.wait(30) is None and spoken.ticket.outcome == "stopped"
    runtime.flights.pop(rid)


def test_the_worker_announces_audio_and_its_voices(runtime):
    assert runtime.outputs == ("text", "audio") and runtime.voices == ("DB30", "bright")


def chat_job(rt, max_tokens: int = 24, **options) -> GenerateJob:
    """A chat job whose reply is also spoken (the tiny thinker writes `max_tokens` random tokens)."""
    speech = SpeechOptions(**({"seed": 5, "format": "pcm"} | options))
    return GenerateJob(
        request_id=new_id(), model=rt.config.name, speech=speech,
        messages=(ChatMessage("user", (Part("text", text="Say something."),)),),
        sampling=Sampling(max_tokens=max_tokens, ignore_eos=True, seed=3),
    )  # fmt: skip


def test_a_spoken_chat_reply_streams_text_then_audio_then_one_done(runtime, rds):
    job = chat_job(runtime)
    run(runtime, job).join(120)
    events = finished(rds, job.request_id)
    kinds = [e.type for e in events]
    assert kinds[0] == EventType.STARTED and kinds[-1] == EventType.DONE
    assert EventType.DELTA in kinds and EventType.AUDIO in kinds
    reply = "".join(e.text or "" for e in events if e.type == EventType.DELTA)
    infos, data = audio(rds, events)
    done = events[-1]
    summary = SpeechSummary.from_info(done.info["speech"])
    assert summary.chunks == len(infos) > 0 and [i.index for i in infos] == list(range(len(infos)))
    assert summary.seed == 5 and len(data) == 2 * round(summary.duration_s * summary.sample_rate)
    assert done.finish_reason == "length" and done.usage.completion_tokens == 24  # the text's usage
    spoken = "".join(dict.fromkeys(i.text for i in infos))  # each segment's text, in order
    assert spoken.replace(" ", "") in reply.replace(" ", "") and len(spoken.strip()) > 0


def test_cancelling_a_spoken_reply_ends_it_once_and_the_worker_goes_on(runtime, rds):
    job = chat_job(runtime, max_tokens=40)
    thread = run(runtime, job)
    deadline = time.time() + 60
    while not any(e.type == EventType.AUDIO for e in stream(rds, job.request_id)):
        assert time.time() < deadline, "no audio came"
        time.sleep(0.02)
    runtime.cancel(job.request_id, runtime.steps())
    thread.join(60)
    assert finished(rds, job.request_id)[-1].type == EventType.CANCELLED
    again = chat_job(runtime, max_tokens=4)
    run(runtime, again).join(120)
    assert finished(rds, again.request_id)[-1].type == EventType.DONE


def test_a_spoken_reply_with_an_unknown_voice_is_invalid_argument(runtime, rds):
    job = chat_job(runtime, voice="nobody-here")
    run(runtime, job).join(60)
    last = finished(rds, job.request_id)[-1]
    assert last.type == EventType.ERROR and last.error_code == ErrorCode.INVALID_ARGUMENT
    assert "voice" in last.message


def test_a_spoken_reply_cut_by_the_audio_budget_still_ends_once_after_its_text(runtime, rds):
    limits = runtime.speech.limits
    runtime.speech.limits = dataclasses.replace(limits, max_audio_seconds=0.5)  # one or two patches
    try:
        job = chat_job(runtime, max_tokens=40)
        run(runtime, job).join(120)
    finally:
        runtime.speech.limits = limits
    events = finished(rds, job.request_id)
    done = events[-1]
    assert done.type == EventType.DONE and done.usage.completion_tokens == 40
    summary = SpeechSummary.from_info(done.info["speech"])
    assert 0 < summary.duration_s <= 0.5 + 1e-6
