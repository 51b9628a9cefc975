"""SynthesizeSpeech / SynthesizeSpeechStream and spoken chat replies on a real gateway (grpc.aio on a free
port, real Redis, the real Celery queue) with a FakeWorker that parks each audio chunk under `audio_key`
as a worker does; also ListModels' voices and speech items of a batch."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis

from gateway.api import pb, pb_grpc
from pipelines.audio_files import assemble
from pipelines.batches import BatchItemJob, batch_queue_name
from pipelines.protocol import EventType, SpeechSummary, Usage, audio_key, cancel_key, queue_name
from tests.gateway.audio_data import opus_chunks, pcm_chunks, pcm_tone, read_audio
from tests.gateway.test_image import read_all, rpc_error
from tests.gateway.test_speech_convert import BAD

REPO = Path(__file__).resolve().parents[2]
VOICES = ("DB30", "lingxiao")


def request(model: str, **kw) -> pb.SynthesizeSpeechRequest:
    kw.setdefault("text", "Hello there. How are you?")
    return pb.SynthesizeSpeechRequest(model=model, **kw)


def chat(model: str, speech: pb.SpeechOptions | None = None, **kw) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        model=model, messages=[pb.Message(role="user", content=[pb.ContentPart(text="Hi")])]
    )
    req.MergeFrom(pb.GenerateRequest(**kw))
    if speech is not None:
        req.speech.CopyFrom(speech)
    return req


@pytest.fixture()
def db(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
def served(start_gateway, channel_to, fake_worker, model):
    """(gateway, worker, stub): a model whose one worker speaks (Ming 2.0 with its talker)."""
    gw = start_gateway((model,))
    worker = fake_worker(model, family="ming", outputs=("text", "audio"), voices=VOICES)
    return gw, worker, pb_grpc.InferenceStub(channel_to(gw.address))


# ---- unary ------------------------------------------------------------------------------------
def test_synthesize_speech_returns_a_wav_file_at_its_rate(served, db, model, caplog):
    gw, worker, stub = served
    req = request(model, voice="DB30", speed=1.25, sample_rate=24000, seed=11, request_id="tts-u1")
    with caplog.at_level("INFO", logger="bailing.gateway.requests"):
        future = stub.SynthesizeSpeech.future(req, timeout=30)
        job = worker.take_job()
        assert (job["task"], job["request_id"], job["prompt"]) == ("speech", "tts-u1", None)
        assert job["messages"] == [
            {
                "role": "user",
                "parts": [{"type": "text", "text": "Hello there. How are you?", "media": None}],
                "tool_calls": [],
                "tool_call_id": "",
            }
        ]
        speech = job["speech"]
        assert (speech["voice"], speech["speed"], speech["sample_rate"], speech["seed"]) == (
            "DB30",
            1.25,
            24000,
            11,
        )
        assert (speech["format"], speech["temperature"], speech["guidance_scale"]) == ("wav", None, None)
        chunks = pcm_chunks(0.6, 24000, 3)
        keys = worker.speak("tts-u1", chunks, rate=24000, seed=11)
        resp = future.result(timeout=10)
    samples, rate = read_audio(resp.audio)
    assert rate == 24000 and samples.tobytes() == pcm_tone(0.6, 24000)
    assert (resp.request_id, resp.model, resp.mime_type, resp.format) == ("tts-u1", model, "audio/wav", "wav")
    assert (resp.sample_rate, resp.seed, resp.duration_s) == (24000, 11, pytest.approx(0.6))
    assert (resp.usage.prompt_tokens, resp.usage.latent_frames, resp.usage.chunks) == (5, 12, 3)
    assert resp.finish_reason == "stop"
    assert resp.timing.total_s >= resp.timing.time_to_first_token_s >= resp.timing.queue_s > 0
    assert db.exists(*keys) == 0  # read once, then deleted
    metric = gw.gateway.metrics.registry.get_sample_value
    labels = {"model": model, "method": "SynthesizeSpeech"}
    assert metric("bailing_gateway_requests_total", {**labels, "code": "OK"}) == 1.0
    assert metric("bailing_gateway_audio_seconds_total", labels) == pytest.approx(0.6)
    assert metric("bailing_gateway_time_to_first_audio_seconds_count", {"model": model}) == 1.0
    (line,) = [json.loads(r.message) for r in caplog.records if "tts-u1" in r.message]
    assert (line["method"], line["status"], line["audio_s"], line["worker"]) == (
        "SynthesizeSpeech", "OK", 0.6, worker.worker_id,
    )  # fmt: skip
    assert line["ttfa_s"] > 0 and line["ttft_s"] is None


@pytest.mark.parametrize("fmt", ["pcm", "opus"])
def test_pcm_and_opus_clips_are_their_chunks_concatenated(served, model, fmt):
    _, worker, stub = served
    rid = f"tts-{fmt}"
    future = stub.SynthesizeSpeech.future(request(model, format=fmt.upper(), request_id=rid), timeout=30)
    assert worker.take_job()["speech"]["format"] == fmt
    if fmt == "pcm":
        chunks, durations = pcm_chunks(0.5, 16000, 2), None
        want = pcm_tone(0.5, 16000)
    else:
        want, chunks = opus_chunks(3.0, 16000, 3)
        durations = [1.0, 1.0, 1.0]
    worker.speak(rid, chunks, fmt=fmt, durations=durations)
    resp = future.result(timeout=10)
    assert resp.audio == want and resp.format == fmt
    assert resp.mime_type == {"pcm": "audio/pcm", "opus": "audio/ogg;codecs=opus"}[fmt]
    if fmt == "opus":
        samples, rate = read_audio(resp.audio)
        assert rate == 16000 and len(samples) > 40000


def test_the_speaker_clip_is_stored_and_sent_as_an_audio_part(served, db, model):
    _, worker, stub = served
    clip = assemble("wav", 16000, [pcm_tone(1.0, 16000)])
    req = request(model, speaker_audio=pb.Media(data=clip), speaker_text="a clip", request_id="tts-clone")
    future = stub.SynthesizeSpeech.future(req, timeout=30)
    job = worker.take_job()
    audio, text = job["messages"][0]["parts"]
    assert (audio["type"], audio["media"]["mime_type"], text["text"]) == ("audio", "audio/wav", req.text)
    assert db.get(audio["media"]["key"]) == clip and job["speech"]["speaker_text"] == "a clip"
    worker.speak("tts-clone", [b"\0\0" * 10])
    assert future.result(timeout=10).usage.chunks == 1


def test_a_missing_chunk_is_an_internal_error(served, model):
    _, worker, stub = served
    future = stub.SynthesizeSpeech.future(request(model, request_id="tts-m1"), timeout=30)
    worker.take_job()
    worker.emit("tts-m1", EventType.STARTED)
    info = {"index": 0, "key": audio_key("tts-m1", 0), "sample_rate": 16000, "start_s": 0.0}
    worker.emit("tts-m1", EventType.AUDIO, info={**info, "duration_s": 0.1, "size": 10})
    err = rpc_error(future.result, timeout=10)
    assert err.code() is grpc.StatusCode.INTERNAL
    assert err.details() == (
        f"audio chunk 0 of request tts-m1 is missing from Redis (key {audio_key('tts-m1', 0)}: "
        "never written, or expired)"
    )


def test_a_unary_clip_over_the_message_limit_points_to_the_stream(
    start_gateway, channel_to, fake_worker, model
):
    gw = start_gateway((model,), max_message_bytes=64 * 1024)
    worker = fake_worker(model, family="ming", outputs=("text", "audio"))
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    big = [b"\1\0" * 20_000, b"\2\0" * 20_000]
    future = stub.SynthesizeSpeech.future(request(model, request_id="tts-big"), timeout=30)
    worker.take_job()
    worker.speak("tts-big", big)
    err = rpc_error(future.result, timeout=10)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the gateway's max_message_bytes (65536): use SynthesizeSpeechStream" in err.details()
    call = stub.SynthesizeSpeechStream(request(model, request_id="tts-big2"), timeout=30)
    worker.take_job()
    worker.speak("tts-big2", big)
    assert [c.audio for c in call if not c.last] == big  # one chunk per message


# ---- stream -----------------------------------------------------------------------------------
def test_stream_sends_each_chunk_then_the_summary(served, db, model):
    _, worker, stub = served
    call = stub.SynthesizeSpeechStream(request(model, format="pcm", seed=3, request_id="tts-s1"), timeout=30)
    worker.take_job()
    reader, got = read_all(call)
    chunks = pcm_chunks(0.3, 16000, 3)
    keys = worker.speak("tts-s1", chunks, fmt="pcm", seed=3)
    reader.join(10)
    assert not reader.is_alive()
    *audio, last = got
    assert [(c.index, c.audio, c.sample_rate, c.text, c.last) for c in audio] == [
        (i, chunks[i], 16000, f"s{i}", False) for i in range(3)
    ]
    assert [c.start_s for c in audio] == pytest.approx([0.0, 0.1, 0.2])
    assert (last.last, last.index, last.audio, last.start_s) == (True, 3, b"", pytest.approx(0.3))
    s = last.summary
    assert (s.request_id, s.format, s.sample_rate, s.seed, s.audio) == ("tts-s1", "pcm", 16000, 3, b"")
    assert (s.usage.chunks, s.duration_s, s.mime_type) == (3, pytest.approx(0.3), "audio/pcm")
    assert s.timing.time_to_first_token_s > 0 and {c.request_id for c in got} == {"tts-s1"}
    assert db.exists(*keys) == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_worker_error_reaches_the_client_with_its_status(served, model, stream):
    _, worker, stub = served
    rid = f"tts-err-{stream}"
    call = (stub.SynthesizeSpeechStream if stream else stub.SynthesizeSpeech.future)(
        request(model, request_id=rid), timeout=30
    )
    worker.take_job()
    worker.speak(rid, [b"\0\0" * 4], done=False)
    worker.emit(rid, EventType.ERROR, error_code="INVALID_ARGUMENT", message="text has nothing to speak")
    got: list = []
    with pytest.raises(grpc.RpcError) as info:
        got.extend(call) if stream else call.result(timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "text has nothing to speak"
    if stream:  # what came before the error was relayed
        assert [c.index for c in got] == [0]


def test_a_plain_cancel_of_the_worker_ends_the_call_cancelled(served, model):
    _, worker, stub = served
    future = stub.SynthesizeSpeech.future(request(model, request_id="tts-pc"), timeout=30)
    worker.take_job()
    worker.emit("tts-pc", EventType.STARTED)
    worker.emit("tts-pc", EventType.CANCELLED, finish_reason="cancelled")
    assert rpc_error(future.result, timeout=10).code() is grpc.StatusCode.CANCELLED


# The client runs in its own process, as in test_service.py: a sync client cancel in the process of
# the grpc.aio server sometimes never reaches it.
_CANCELLING_CLIENT = """
import sys, grpc
from gateway.api import pb, pb_grpc
address, model, rid, spoken_chat = sys.argv[1:5]
with grpc.insecure_channel(address) as channel:
    stub = pb_grpc.InferenceStub(channel)
    if spoken_chat == "1":
        req = pb.GenerateRequest(model=model, prompt="hi", request_id=rid, speech=pb.SpeechOptions())
        call = stub.GenerateStream(req, timeout=30)
    else:
        req = pb.SynthesizeSpeechRequest(model=model, text="hi", request_id=rid)
        call = stub.SynthesizeSpeechStream(req, timeout=30)
    assert next(call).audio
    call.cancel()
"""


@pytest.mark.parametrize("spoken_chat", [False, True])
def test_cancelling_the_stream_cancels_the_request(served, db, model, spoken_chat):
    gw, worker, _ = served
    rid = f"tts-c-{spoken_chat}"
    argv = [sys.executable, "-c", _CANCELLING_CLIENT, gw.address, model, rid, str(int(spoken_chat))]
    client = subprocess.Popen(argv, cwd=REPO)
    try:
        worker.take_job()
        worker.speak(rid, [b"\0\0" * 8], done=False)
        assert client.wait(timeout=30) == 0
        # an idle handler may only notice its client left at its next write: keep speaking like a worker
        for index in range(1, 40):
            if db.exists(cancel_key(rid)):
                return
            worker.put_audio(rid, index, b"\0\0" * 8, rate=16000, start_s=0.0, duration_s=0.0005)
            time.sleep(0.2)
        raise AssertionError(f"no cancel flag for {rid}")
    finally:
        client.kill()


# ---- rejected before anything is queued ---------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "fragment"), [c[1:] for c in BAD[2:]], ids=[c[0] for c in BAD[2:]])
def test_bad_requests_are_invalid_argument_and_queue_nothing(
    start_gateway, channel_to, fake_worker, db, model, kwargs, fragment
):
    gw = start_gateway((model,), max_speaker_audio_bytes=4096)
    fake_worker(model, family="ming", outputs=("text", "audio"), voices=VOICES)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    req = request(model, **kwargs)
    err = rpc_error(stub.SynthesizeSpeech, req, timeout=5)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and fragment in err.details()
    err = rpc_error(lambda: list(stub.SynthesizeSpeechStream(req, timeout=5)))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and fragment in err.details()
    assert db.llen(queue_name(model)) == 0


def test_voices_and_outputs_decide_what_is_accepted(start_gateway, channel_to, fake_worker, db, model):
    gw = start_gateway((model,))
    fake_worker(model, family="ling")  # announces outputs ("text",)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    err = rpc_error(stub.SynthesizeSpeech, request(model), timeout=5)
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"model {model!r} does not synthesize speech (outputs: text)",
    )
    err = rpc_error(stub.Generate, chat(model, pb.SpeechOptions()), timeout=5)
    assert err.details() == f"model {model!r} does not synthesize speech (outputs: text)"
    assert db.llen(queue_name(model)) == 0


def test_list_models_shows_audio_output_and_voices(served, model):
    _, _, stub = served
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
    assert (list(info.outputs), list(info.voices)) == (["text", "audio"], list(VOICES))
    err = rpc_error(stub.SynthesizeSpeech, request(model, voice="nobody"), timeout=5)
    assert err.details() == f"voice 'nobody' is not a voice of model {model!r} (voices: DB30, lingxiao)"


# ---- spoken chat replies ------------------------------------------------------------------------
def spoken_answer(worker, rid: str, chunks: list[bytes]) -> None:
    """A chat reply spoken as it is written: text, audio, text, audio, done (usage + speech summary)."""
    worker.emit(rid, EventType.STARTED)
    worker.emit(rid, EventType.DELTA, text="Hello ")
    worker.put_audio(
        rid, 0, chunks[0], rate=16000, start_s=0.0, duration_s=len(chunks[0]) / 32000, text="Hello"
    )
    worker.emit(rid, EventType.DELTA, text="world.")
    worker.put_audio(
        rid, 1, chunks[1], rate=16000, start_s=0.1, duration_s=len(chunks[1]) / 32000, text="world."
    )
    summary = SpeechSummary(16000, 0.2, "wav", 9, 2, 8).to_info()
    usage = Usage(prompt_tokens=6, completion_tokens=3)
    worker.emit(rid, EventType.DONE, finish_reason="stop", usage=usage, info={"speech": summary})


def test_a_spoken_chat_answer_carries_its_clip(served, db, model):
    _, worker, stub = served
    speech = pb.SpeechOptions(voice="lingxiao", seed=9, speed=1.5)
    future = stub.Generate.future(chat(model, speech, request_id="say-u1"), timeout=30)
    job = worker.take_job()
    assert (job["task"], job["speech"]["voice"], job["speech"]["seed"], job["speech"]["speed"]) == (
        "generate", "lingxiao", 9, 1.5,
    )  # fmt: skip
    chunks = pcm_chunks(0.2, 16000, 2)
    spoken_answer(worker, "say-u1", chunks)
    resp = future.result(timeout=10)
    assert (resp.text, resp.finish_reason, resp.usage.completion_tokens) == ("Hello world.", "stop", 3)
    samples, rate = read_audio(resp.speech.audio)
    assert rate == 16000 and samples.tobytes() == b"".join(chunks)
    assert (resp.speech.seed, resp.speech.usage.chunks, resp.speech.usage.prompt_tokens) == (9, 2, 0)
    assert db.exists(audio_key("say-u1", 0), audio_key("say-u1", 1)) == 0


def test_a_spoken_chat_stream_interleaves_text_and_audio(served, model):
    _, worker, stub = served
    call = stub.GenerateStream(chat(model, pb.SpeechOptions(format="pcm"), request_id="say-s1"), timeout=30)
    assert worker.take_job()["speech"]["format"] == "pcm"
    reader, got = read_all(call)
    chunks = pcm_chunks(0.2, 16000, 2)
    spoken_answer(worker, "say-s1", chunks)
    reader.join(10)
    kinds = [
        "audio" if c.HasField("audio") and not c.finish_reason else "text" if c.text else "finish"
        for c in got
    ]
    assert kinds == ["text", "audio", "text", "audio", "finish"]
    assert [c.audio.audio for c in got if c.HasField("audio") and not c.audio.last] == chunks
    finish = got[-1]
    assert (finish.finish_reason, finish.usage.completion_tokens, finish.audio.last) == ("stop", 3, True)
    assert (finish.audio.index, finish.audio.summary.seed, finish.audio.summary.duration_s) == (2, 9, 0.2)


def test_a_chat_without_speech_on_a_speaking_model_is_plain_text(served, model):
    _, worker, stub = served
    future = stub.Generate.future(chat(model, request_id="say-plain"), timeout=30)
    assert worker.take_job()["speech"] is None
    worker.answer("say-plain", "just text")
    resp = future.result(timeout=10)
    assert resp.text == "just text " and not resp.HasField("speech")


# ---- batches ------------------------------------------------------------------------------------
def test_speech_batch_items_are_queued_with_their_clip(served, channel_to, db, model):
    gw, _, _ = served
    jobs = pb_grpc.JobsStub(channel_to(gw.address))
    clip = assemble("wav", 16000, [pcm_tone(1.0, 16000)])
    line = {
        "custom_id": "greet",
        "method": "SynthesizeSpeech",
        "body": {
            "text": "Good morning",
            "format": "opus",
            "speakerAudio": {"data": base64.b64encode(clip).decode()},
        },
    }
    batch = jobs.CreateBatch(pb.CreateBatchRequest(model=model, jsonl=json.dumps(line).encode()), timeout=10)
    (raw,) = db.lrange(batch_queue_name(model), 0, -1)
    args, _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    item = BatchItemJob.from_dict(args[0])
    assert (item.custom_id, item.job.task, item.job.request_id) == ("greet", "speech", f"{batch.id}-0")
    assert item.job.speech.format == "opus" and item.job.messages[0].parts[1].text == "Good morning"
    assert db.get(item.job.messages[0].parts[0].media.key) == clip  # parked until the item runs
