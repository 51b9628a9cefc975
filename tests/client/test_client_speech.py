"""Speech against an in-process gateway with a FakeWorker (real Redis, Celery queue, gRPC):
`synthesize_speech` / `synthesize_speech_stream` (sync and async), spoken chat, `bailing speak` and
`bailing chat --speak`."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from bailing.cli import main
from bailing.client import AsyncClient, BailingClientError, Client, write_speech
from gateway.config import GatewayConfig
from pipelines.audio_files import assemble
from tests.gateway.audio_data import opus_chunks, pcm_chunks, pcm_tone, read_audio
from tests.gateway.conftest import FakeWorker, GatewayThread
from tests.gateway.test_speech import spoken_answer

WAV_CLIP = assemble("wav", 16000, [pcm_tone(0.5, 16000)])


# ---- against a gateway with a FakeWorker --------------------------------------------------------
@pytest.fixture()
def model() -> str:
    return f"ming2-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def served(redis_url, model):
    """(gateway, worker): one speaking worker behind an in-process gateway."""
    gw = GatewayThread(GatewayConfig(redis_url=redis_url, models=(model,), port=0)).start()
    worker = FakeWorker(redis_url, model, family="ming", outputs=("text", "audio"), voices=("DB30",)).start()
    yield gw, worker
    worker.close()
    gw.stop()


def speak_next(worker: FakeWorker, jobs: list, chunks: list[bytes], **kwargs) -> threading.Thread:
    """In a thread: take the next job (appended to `jobs`) and speak `chunks` for it."""

    def run() -> None:
        jobs.append(worker.take_job())
        job = jobs[-1]
        if job["task"] == "speech":
            worker.speak(job["request_id"], chunks, fmt=job["speech"]["format"], **kwargs)
        else:
            spoken_answer(worker, job["request_id"], chunks)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_client_synthesize_speech_stream_and_spoken_chat(served, model, tmp_path):
    gw, worker = served
    jobs: list = []
    chunks = pcm_chunks(0.3, 16000, 3)
    with Client(gw.address, timeout=30) as client:
        speak_next(worker, jobs, chunks, seed=5)
        out = client.synthesize_speech(model, "hello", voice="DB30", seed=5, speaker_text=None)
        assert (jobs[0]["speech"]["voice"], jobs[0]["speech"]["seed"]) == ("DB30", 5)
        assert (out.format, out.sample_rate, out.seed, out.usage.chunks) == ("wav", 16000, 5, 3)
        assert read_audio(out.audio)[0].tobytes() == b"".join(chunks)
        speak_next(worker, jobs, chunks)
        with client.synthesize_speech_stream(model, "hello", format="pcm", request_id="tts-cs1") as stream:
            got = list(stream)
        assert [c.audio for c in got[:-1]] == chunks and got[-1].last and got[-1].summary.format == "pcm"
        assert write_speech(iter(got), tmp_path / "s.pcm", "pcm").usage.chunks == 3
        speak_next(worker, jobs, chunks[:2])
        answer = client.generate(
            model, messages=[{"role": "user", "content": "hi"}], speech={"voice": "DB30"}
        )
        assert answer.text == "Hello world." and read_audio(answer.speech.audio)[0].tobytes() == b"".join(
            chunks[:2]
        )
        speak_next(worker, jobs, chunks[:2])
        with client.stream(model, "hi", speech={"format": "pcm"}) as stream:
            parts = list(stream)
        assert "".join(p.text for p in parts) == "Hello world."
        assert [p.audio.audio for p in parts if p.audio and not p.audio.last] == chunks[:2]
        assert parts[-1].audio.last and parts[-1].finish_reason == "stop"
        (info,) = client.list_models()
        assert (info.outputs, info.voices) == (("text", "audio"), ("DB30",))
        with pytest.raises(BailingClientError) as err:
            client.synthesize_speech(model, "hi", speed=3.0)
        assert (err.value.code, err.value.details) == ("INVALID_ARGUMENT", "speed must be in [0.5, 2], got 3")


def test_async_client_synthesize_speech_and_stream(served, model):
    gw, worker = served
    chunks = pcm_chunks(0.2, 16000, 2)

    async def run() -> tuple:
        async with AsyncClient(gw.address, timeout=30) as client:
            jobs: list = []
            speak_next(worker, jobs, chunks)
            out = await client.synthesize_speech(model, "hi", format="pcm", sample_rate=16000)
            speak_next(worker, jobs, chunks)
            async with client.synthesize_speech_stream(model, "hi") as stream:
                got = [c async for c in stream]
            speak_next(worker, jobs, chunks)
            answer = await client.generate(model, "hi", speech={})
            try:
                await client.synthesize_speech(model, "")
            except BailingClientError as exc:
                error = exc
            return jobs, out, got, answer, error

    jobs, out, got, answer, error = asyncio.run(run())
    assert (jobs[0]["speech"]["format"], jobs[0]["speech"]["sample_rate"]) == ("pcm", 16000)
    assert out.audio == b"".join(chunks) and [c.index for c in got] == [0, 1, 2] and got[-1].last
    assert answer.speech is not None and answer.speech.usage.chunks == 2
    assert error.code == "INVALID_ARGUMENT" and error.details.startswith("text is empty")


# ---- the CLI -----------------------------------------------------------------------------------
def test_cli_speak_writes_the_file(served, model, tmp_path, capsys):
    gw, worker = served
    jobs: list = []
    out = tmp_path / "hello.wav"
    chunks = pcm_chunks(0.3, 24000, 2)
    thread = speak_next(worker, jobs, chunks, rate=24000, seed=4)
    argv = [
        "speak",
        "--model",
        model,
        "-o",
        str(out),
        "--seed",
        "4",
        "--speed",
        "1.25",
        "--address",
        gw.address,
    ]
    assert main([*argv, "hello"]) == 0
    thread.join(5)
    assert (jobs[0]["speech"]["seed"], jobs[0]["speech"]["speed"], jobs[0]["speech"]["format"]) == (
        4,
        1.25,
        "wav",
    )
    samples, rate = read_audio(out.read_bytes())
    assert rate == 24000 and samples.tobytes() == b"".join(chunks)
    err = capsys.readouterr().err
    assert f"wrote {out} ({out.stat().st_size} bytes, 0.30 s, 24000 Hz wav, seed 4)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hello.wav"]  # no leftovers


def test_cli_speak_stream_writes_chunks_as_they_come(served, model, tmp_path, capsys):
    gw, worker = served
    jobs: list = []
    clip = tmp_path / "me.wav"
    clip.write_bytes(WAV_CLIP)
    out = tmp_path / "hello.opus"
    whole, pages = opus_chunks(3.0, 16000, 3)
    thread = speak_next(worker, jobs, pages, durations=[1.0, 1.0, 1.0])
    argv = ["speak", "--model", model, "-o", str(out), "--stream", "--speaker-audio", str(clip)]
    assert main([*argv, "--speaker-text", "me", "--address", gw.address, "hello"]) == 0
    thread.join(5)
    assert jobs[0]["speech"]["format"] == "opus" and jobs[0]["messages"][0]["parts"][0]["type"] == "audio"
    assert out.read_bytes() == whole
    err = capsys.readouterr().err
    assert (
        "first audio after " in err
        and f"wrote {out} ({len(whole)} bytes, 3.00 s, 16000 Hz opus, seed 7)" in err
    )
    assert "3 chunk(s), first audio at " in err


def test_cli_speak_usage_errors_come_before_connecting(served, model, tmp_path, capsys, dead_address):
    gw, _ = served
    out = tmp_path / "taken.wav"
    out.write_bytes(b"old")
    base = ["speak", "--model", model, "--address", dead_address]
    assert main([*base, "-o", str(out), "hi"]) == 2
    assert f"{out} exists (use --force to overwrite)" in capsys.readouterr().err
    assert main([*base, "-o", str(out), "--force", "hi"]) == 3  # checked, then no gateway
    assert main([*base, "--speaker-audio", str(tmp_path / "none.wav"), "hi"]) == 2
    assert (
        main([*base, "--voice", "DB30", "--speaker-audio", str(out), "-o", str(tmp_path / "n.wav"), "hi"])
        == 2
    )
    argv = [
        "speak",
        "--model",
        model,
        "-o",
        str(tmp_path / "x.wav"),
        "--address",
        gw.address,
        "--speed",
        "3",
        "hi",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: INVALID_ARGUMENT: speed must be in [0.5, 2], got 3" in err and "Traceback" not in err
    assert out.read_bytes() == b"old" and not (tmp_path / "x.wav").exists()


def test_cli_chat_speak_prints_the_text_and_writes_the_audio(served, model, tmp_path, capsys):
    gw, worker = served
    jobs: list = []
    chunks = pcm_chunks(0.2, 16000, 2)
    thread = speak_next(worker, jobs, chunks)
    out = tmp_path / "answer.wav"
    argv = ["chat", "--model", model, "--speak", str(out), "--voice", "DB30", "--address", gw.address]
    assert main([*argv, "Say hello"]) == 0
    thread.join(5)
    assert (jobs[0]["task"], jobs[0]["speech"]["voice"], jobs[0]["speech"]["format"]) == (
        "generate",
        "DB30",
        "wav",
    )
    captured = capsys.readouterr()
    assert captured.out == "Hello world.\n"
    assert f"wrote {out} ({out.stat().st_size} bytes, 0.20 s, 16000 Hz wav, seed 9)" in captured.err
    samples, rate = read_audio(out.read_bytes())
    assert rate == 16000 and samples.tobytes() == b"".join(chunks)
    assert main([*argv, "again"]) == 2  # the answer file exists now
    assert main([*argv, "--json", "--force", "again"]) == 2
    assert "--speak streams one spoken answer" in capsys.readouterr().err
