"""Transcribe: TranscribeRequest -> transcribe job (no server), then the RPCs on a real gateway with
a FakeWorker (real Redis, real Celery queue, real grpc.aio server), and the Python client against it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis

from bailing.client import AsyncClient, BailingClientError, Client, Transcription
from gateway.api import pb, pb_grpc
from gateway.config import GatewayConfig
from gateway.errors import Rejection
from gateway.state import ModelState, RequestTrace
from gateway.transcribe import transcribe_to_job, transcript_chunks, transcript_response
from pipelines.protocol import Event, EventType, GenerateJob, Usage, WorkerInfo, cancel_key, media_key

CFG = GatewayConfig(redis_url="redis://unused", models=("ming", "ling"), max_media_bytes=1024 * 1024)
WAV = b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 32
FLAC = b"fLaC" + b"\0" * 32
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def worker(modalities=("text", "image", "audio", "video"), model="ming", max_model_len=2048) -> WorkerInfo:
    return WorkerInfo("w1", model, "ming", "h", 1, "cpu", 4, max_model_len, tuple(modalities))


OMNI = ModelState("ming", (worker(),))
TEXT_ONLY = ModelState("ling", (worker(("text",), model="ling"),))


def request(**kw) -> pb.TranscribeRequest:
    kw.setdefault("model", "ming")
    kw.setdefault("audio", pb.Media(data=WAV, mime_type="audio/wav"))
    return pb.TranscribeRequest(**kw)


def convert(req: pb.TranscribeRequest, state: ModelState | None = OMNI):
    return transcribe_to_job(req, CFG, state, submitted_at=1000.0, deadline=1010.0)


def rejection(req: pb.TranscribeRequest, state: ModelState | None = OMNI) -> Rejection:
    with pytest.raises(Rejection) as info:
        convert(req, state)
    return info.value


# ---- TranscribeRequest -> job ------------------------------------------------------------------
def test_request_becomes_one_user_message_with_the_audio():
    req = request(
        sampling=pb.SamplingParams(max_tokens=64, temperature=0.0, n=1),
        request_id="tr-1",
        priority=2,
    )
    job, blobs = convert(req)
    assert (job.task, job.request_id, job.model) == ("transcribe", "tr-1", "ming")
    assert (job.priority, job.deadline, job.submitted_at, job.prompt) == (2, 1010.0, 1000.0, None)
    assert (job.sampling.max_tokens, job.sampling.temperature, job.sampling.n) == (64, 0.0, 1)
    assert job.enable_thinking is None and job.diffusion is None
    (message,) = job.messages
    (part,) = message.parts
    assert message.role == "user" and part.type == "audio" and part.text == ""
    assert (part.media.kind, part.media.mime_type, part.media.size) == ("audio", "audio/wav", len(WAV))
    assert part.media.key == media_key(hashlib.sha256(WAV).hexdigest())
    assert [(b.key, b.data) for b in blobs] == [(part.media.key, WAV)]
    assert GenerateJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job  # survives Celery's JSON


def test_unset_fields_take_defaults_and_the_mime_type_comes_from_the_bytes():
    job, _ = convert(request(audio=pb.Media(data=FLAC)))
    assert job.sampling.max_tokens is None and job.sampling.n == 1
    assert job.messages[0].parts[0].media.mime_type == "audio/flac"
    assert len(job.request_id) == 32


def test_live_checks_are_skipped_without_workers():
    job, _ = convert(request(model="ling", sampling=pb.SamplingParams(max_tokens=4096)), state=None)
    assert job.task == "transcribe" and job.sampling.max_tokens == 4096


S = pb.SamplingParams
BAD = [
    # (id, request kwargs, exact message or a fragment of it)
    ("no-audio", {"audio": None}, "audio is empty"),
    ("empty-bytes", {"audio": pb.Media(data=b"", mime_type="audio/wav")}, "audio is empty"),
    (
        "wrong-mime",
        {"audio": pb.Media(data=WAV, mime_type="image/png")},
        "audio: mime_type 'image/png' is not a supported audio type (one of audio/wav, audio/flac, ",
    ),
    (
        "image-bytes",
        {"audio": pb.Media(data=PNG)},
        "audio: not a decodable audio (bytes match none of WAV, FLAC, OGG, MP3; they look like PNG image)",
    ),
    (
        "image-bytes-audio-mime",
        {"audio": pb.Media(data=PNG, mime_type="audio/wav")},
        "audio: not a decodable audio (mime audio/wav, bytes do not start with a WAV signature; "
        "they look like PNG image)",
    ),
    (
        "mime-mismatch",
        {"audio": pb.Media(data=FLAC, mime_type="audio/wav")},
        "audio: mime_type audio/wav does not match the bytes (they are FLAC, audio/flac)",
    ),
    (
        "too-big",
        {"audio": pb.Media(data=WAV + b"\0" * (1024 * 1024))},
        "audio: is 1048624 bytes, more than the limit of 1048576 bytes",
    ),
    ("n-2", {"sampling": S(n=2)}, "sampling.n must be 1 for a transcription"),
    ("n-0", {"sampling": S(n=0)}, "sampling.n must be 1 for a transcription"),
    ("max_tokens", {"sampling": S(max_tokens=0)}, "sampling.max_tokens must be in [1, 8192], got 0"),
    ("temperature", {"sampling": S(temperature=-1)}, "sampling.temperature must be >= 0, got -1"),
    ("request_id", {"request_id": "a b"}, "request_id must match"),
    ("model-empty", {"model": ""}, "model is empty"),
]


@pytest.mark.parametrize(("kwargs", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_field_is_invalid_argument_naming_it(kwargs, fragment):
    err = rejection(request(**kwargs))
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.message


def test_model_without_audio_input_is_rejected_naming_what_it_accepts():
    err = rejection(request(model="ling"), state=TEXT_ONLY)
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.message == "audio: model 'ling' does not accept audio input (it accepts text)"


def test_unknown_model_is_not_found():
    err = rejection(request(model="whisper"))
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert err.message == "model 'whisper' is not served here (served: ming, ling)"


# ---- events -> transcript replies --------------------------------------------------------------
def test_transcript_chunks_drop_reasoning_and_keep_the_finish():
    delta = Event(seq=1, type=EventType.DELTA, text="hello", reasoning_text="hmm")
    assert [(c.text, c.reasoning_text) for c in transcript_chunks("r", delta)] == [("hello", "")]
    assert transcript_chunks("r", Event(seq=2, type=EventType.DELTA, reasoning_text="only")) == []
    (last,) = transcript_chunks(
        "r", Event(seq=3, type=EventType.DONE, finish_reason="stop", usage=Usage(9, 2))
    )
    assert (last.finish_reason, last.usage.prompt_tokens, last.usage.completion_tokens) == ("stop", 9, 2)
    with pytest.raises(Rejection) as info:
        transcript_chunks("r", Event(seq=4, type=EventType.ERROR, error_code="INVALID_ARGUMENT", message="x"))
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_transcript_response_keeps_text_usage_and_timing():
    resp = pb.GenerateResponse(
        request_id="r", model="ming", text="hi there", reasoning_text="hmm", finish_reason="length",
        usage=pb.Usage(prompt_tokens=40, completion_tokens=2),
        timing=pb.Timing(queue_s=0.1, time_to_first_token_s=0.2, total_s=0.3),
    )  # fmt: skip
    out = transcript_response(resp)
    assert (out.request_id, out.model, out.text, out.finish_reason) == ("r", "ming", "hi there", "length")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.timing.total_s) == (40, 2, 0.3)
    assert RequestTrace("r", "ming", "Transcribe").method == "Transcribe"


# ---- the RPCs on a real gateway ----------------------------------------------------------------
def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


def wait_for(predicate, timeout: float, what: str) -> None:
    until = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > until:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def served(start_gateway, channel_to, fake_worker, model, modalities=("text", "audio")):
    gw = start_gateway((model,))
    worker = fake_worker(model, family="ming", modalities=modalities)
    return gw, worker, pb_grpc.InferenceStub(channel_to(gw.address))


def test_transcribe_answers_with_the_transcript(start_gateway, channel_to, fake_worker, model, redis_url):
    gw, worker, stub = served(start_gateway, channel_to, fake_worker, model)
    req = request(model=model, request_id="tr-u1", sampling=S(max_tokens=32))
    future = stub.Transcribe.future(req, timeout=30)
    job = worker.take_job()
    assert (job["task"], job["request_id"], job["prompt"]) == (
        "transcribe",
        "tr-u1",
        None,
    )
    assert job["sampling"]["max_tokens"] == 32 and 25 < job["deadline"] - job["submitted_at"] <= 30.5
    (message,) = job["messages"]
    (part,) = message["parts"]
    assert message["role"] == "user" and part["type"] == "audio"
    assert redis.Redis.from_url(redis_url).get(part["media"]["key"]) == WAV  # stored before the task
    worker.answer("tr-u1", text="hello world", reasoning="not part of a transcript")
    resp = future.result(timeout=10)
    assert isinstance(resp, pb.TranscribeResponse)
    assert (resp.request_id, resp.model, resp.text, resp.finish_reason) == (
        "tr-u1",
        model,
        "hello world ",
        "stop",
    )
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (3, 2)
    assert resp.timing.total_s >= resp.timing.time_to_first_token_s > 0
    requests = gw.gateway.metrics.registry.get_sample_value(
        "bailing_gateway_requests_total", {"model": model, "method": "Transcribe", "code": "OK"}
    )
    assert requests == 1.0


def test_transcribe_stream_relays_text_only(start_gateway, channel_to, fake_worker, model, caplog):
    _, worker, stub = served(start_gateway, channel_to, fake_worker, model)
    with caplog.at_level("INFO", logger="bailing.gateway.requests"):
        call = stub.TranscribeStream(request(model=model, request_id="tr-s1"), timeout=30)
        chunks: list[pb.GenerateChunk] = []
        reader = threading.Thread(target=lambda: chunks.extend(call))
        reader.start()
        assert worker.take_job()["task"] == "transcribe"
        worker.answer("tr-s1", text="one two three", reasoning="hmm")
        reader.join(10)
        assert not reader.is_alive()
    assert [c.text for c in chunks[:-1]] == ["one ", "two ", "three "]
    assert all(not c.reasoning_text for c in chunks) and {c.request_id for c in chunks} == {"tr-s1"}
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens == 3
    lines = [json.loads(r.message) for r in caplog.records if "tr-s1" in r.message]
    assert [(line["method"], line["status"]) for line in lines] == [("TranscribeStream", "OK")]


def test_model_without_audio_input_is_invalid_argument(start_gateway, channel_to, fake_worker, model):
    _, _, stub = served(start_gateway, channel_to, fake_worker, model, modalities=("text", "image"))
    err = rpc_error(stub.Transcribe, request(model=model), timeout=5)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"audio: model {model!r} does not accept audio input (it accepts text, image)"
    err = rpc_error(lambda: list(stub.TranscribeStream(request(model=model, audio=None), timeout=5)))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("audio is empty")


def test_unknown_model_and_no_worker(start_gateway, channel_to, model):
    gw = start_gateway((model,))
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    err = rpc_error(stub.Transcribe, request(model="nope"), timeout=5)
    assert err.code() is grpc.StatusCode.NOT_FOUND and "'nope'" in err.details()
    err = rpc_error(stub.Transcribe, request(model=model), timeout=5)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert err.details() == f"no live worker serves model {model!r}"


def test_worker_error_and_deadline(start_gateway, channel_to, fake_worker, model, redis_url):
    _, worker, stub = served(start_gateway, channel_to, fake_worker, model)
    future = stub.Transcribe.future(request(model=model, request_id="tr-e1"), timeout=30)
    worker.take_job()
    worker.emit("tr-e1", EventType.STARTED)
    worker.emit("tr-e1", EventType.ERROR, error_code="INVALID_ARGUMENT", message="audio is 900 s, limit 30 s")
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "audio is 900 s, limit 30 s"
    err = rpc_error(stub.Transcribe, request(model=model, request_id="tr-d1"), timeout=1.0)
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    r = redis.Redis.from_url(redis_url)
    wait_for(lambda: r.exists(cancel_key("tr-d1")), 5, "the cancel of the request past its deadline")


# ---- the Python client against it --------------------------------------------------------------
def test_client_transcribe_and_stream(start_gateway, channel_to, fake_worker, model, tmp_path):
    gw, worker, _ = served(start_gateway, channel_to, fake_worker, model)
    path = tmp_path / "speech.wav"
    path.write_bytes(WAV)

    def answer(text: str) -> dict:
        job = worker.take_job()
        worker.answer(job["request_id"], text=text)
        return job

    def stream() -> list:
        with client.transcribe_stream(model, WAV, request_id="tr-c2") as chunks:
            return list(chunks)

    with Client(gw.address, timeout=30) as client, ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.transcribe, model, path, max_tokens=16)
        job = answer("ni hao")
        assert (job["task"], job["sampling"]["max_tokens"]) == ("transcribe", 16)
        out = future.result(10)
        assert isinstance(out, Transcription)
        assert (out.model, out.text, out.finish_reason, out.usage.completion_tokens) == (
            model,
            "ni hao ",
            "stop",
            2,
        )
        future = pool.submit(stream)
        answer("a b c")
        chunks = future.result(10)
        assert "".join(c.text for c in chunks) == "a b c " and {c.request_id for c in chunks} == {"tr-c2"}
        assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens == 3
        with pytest.raises(BailingClientError) as info:
            client.transcribe(model, PNG, mime_type="image/png")
        assert info.value.code == "INVALID_ARGUMENT"
        assert info.value.details.startswith("audio: mime_type 'image/png' is not a supported audio type")


def test_async_client_transcribe(start_gateway, channel_to, fake_worker, model):
    gw, worker, _ = served(start_gateway, channel_to, fake_worker, model)

    async def run() -> tuple:
        async with AsyncClient(gw.address, timeout=30) as client:
            call = asyncio.ensure_future(client.transcribe(model, WAV))
            job = await asyncio.to_thread(worker.take_job)
            await asyncio.to_thread(worker.answer, job["request_id"], "good morning")
            out = await call
            stream = client.transcribe_stream(model, FLAC)
            job = await asyncio.to_thread(worker.take_job)
            await asyncio.to_thread(worker.answer, job["request_id"], "bye")
            async with stream:
                chunks = [c async for c in stream]
            return out, chunks

    out, chunks = asyncio.run(run())
    assert (out.text, out.finish_reason) == ("good morning ", "stop")
    assert [c.text for c in chunks] == ["bye ", ""] and chunks[-1].finish_reason == "stop"
