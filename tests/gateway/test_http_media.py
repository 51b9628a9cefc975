"""The OpenAI audio and image endpoints of a real gateway (real Redis, the real Celery queue, a FakeWorker
answering in Redis as a worker does): /v1/audio/transcriptions (a multipart upload, unary and
streamed), /v1/audio/speech (a file, or SSE), /v1/images/generations and /v1/images/edits; each
endpoint's bad input gets OpenAI's error object and the gateway keeps serving."""

from __future__ import annotations

import base64
import json
import threading

import httpx2
import pytest

from tests.gateway.audio_data import pcm_chunks, read_audio
from tests.gateway.test_image_convert import PNG
from tests.gateway.test_speech import spoken_answer
from tests.gateway.test_transcribe import WAV

VOICES = ("DB30", "lingxiao")


@pytest.fixture()
def served(start_gateway, fake_worker, model):
    """(HTTP client, worker, model): one Ming worker that hears audio, draws images and speaks."""
    gw = start_gateway((model,), http_port=0, max_message_bytes=256 * 1024)
    worker = fake_worker(
        model,
        family="ming",
        modalities=("text", "image", "audio"),
        outputs=("text", "image", "audio"),
        voices=VOICES,
    )
    with httpx2.Client(base_url=f"http://127.0.0.1:{gw.gateway.http_port}", timeout=30) as client:
        yield client, worker, model


def answer_next(do) -> tuple[threading.Thread, list[dict]]:
    """Run `do(job)` on the next job the gateway queues (on a thread: the HTTP call blocks)."""
    jobs: list[dict] = []

    def run() -> None:
        jobs.append(do())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, jobs


def error_of(resp, status: int, *words: str, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in err["message"]
    assert all(w in err["message"] for w in words), err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def sse_events(payload: bytes) -> list:
    frames = [f[len(b"data: ") :] for f in payload.split(b"\n\n") if f]
    assert frames[-1] == b"[DONE]"
    return [json.loads(f) for f in frames[:-1]]


# ---- transcriptions ---------------------------------------------------------------------------
def test_a_transcription_upload_answers_with_the_transcript(served):
    client, worker, model = served

    def work():
        job = worker.take_job()
        worker.answer(job["request_id"], "hello world", reasoning="not part of a transcript")
        return job

    t, jobs = answer_next(work)
    files = {"file": ("speech.wav", WAV, "audio/wav")}
    resp = client.post("/v1/audio/transcriptions", files=files, data={"model": model, "temperature": "0"})
    t.join()
    assert resp.status_code == 200, resp.text
    assert resp.json()["text"] == "hello world "
    assert resp.json()["usage"] == {
        "type": "tokens",
        "input_tokens": 3,
        "output_tokens": 2,
        "total_tokens": 5,
    }
    (job,) = jobs
    assert job["task"] == "transcribe" and job["sampling"]["temperature"] == 0.0

    t, _ = answer_next(lambda: worker.answer(worker.take_job()["request_id"], "plain text"))
    data = {"model": model, "response_format": "text"}
    generic = {"file": ("speech", WAV, "application/octet-stream")}  # curl's -F file=@...: from the bytes
    resp = client.post("/v1/audio/transcriptions", files=generic, data=data)
    t.join()
    assert resp.status_code == 200 and resp.text == "plain text "
    assert resp.headers["content-type"].startswith("text/plain")


def test_a_streamed_transcription_sends_openai_s_delta_and_done_events(served):
    client, worker, model = served
    t, _ = answer_next(lambda: worker.answer(worker.take_job()["request_id"], "a b"))
    files = {"file": ("speech.wav", WAV, "audio/wav")}
    resp = client.post("/v1/audio/transcriptions", files=files, data={"model": model, "stream": "true"})
    t.join()
    events = sse_events(resp.content)
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 2 + ["transcript.text.done"]
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == "a b "
    assert events[-1]["usage"]["output_tokens"] == 2


@pytest.mark.parametrize(
    ("files", "data", "status", "words", "param"),
    [
        ({}, {"model": "M"}, 400, ["file is required"], "file"),
        ({"file": ("a.wav", WAV, "audio/wav")}, {}, 400, ["model is required"], "model"),
        (
            {"file": ("a.wav", WAV, "audio/wav")},
            {"model": "M", "response_format": "srt"},
            400,
            ["timestamps"],
            None,
        ),
        (
            {"file": ("a.wav", WAV, "audio/wav")},
            {"model": "M", "language": "en"},
            400,
            ["language"],
            "language",
        ),
        ({"file": ("a.wav", WAV, "audio/wav")}, {"model": "M", "temperature": "hot"}, 400, ["number"], None),
        ({"file": ("a.wav", WAV, "audio/wav")}, {"model": "nope"}, 404, ["nope"], None),
        ({"file": ("a.png", PNG, "image/png")}, {"model": "M"}, 400, ["audio"], None),
        ({"file": ("a.wav", b"", "audio/wav")}, {"model": "M"}, 400, ["empty"], None),
    ],
)
def test_bad_transcription_uploads_get_the_openai_error(served, files, data, status, words, param):
    client, worker, model = served
    data = {k: (model if v == "M" else v) for k, v in data.items()}
    resp = client.post("/v1/audio/transcriptions", files=files or {"other": ("x", b"1")}, data=data)
    error_of(resp, status, *words, param=param)
    t, _ = answer_next(lambda: worker.answer(worker.take_job()["request_id"], "still here"))
    ok = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", WAV)}, data={"model": model})
    t.join()
    assert ok.json()["text"] == "still here "


def test_a_json_body_or_an_oversize_upload_is_refused(served):
    client, _, model = served
    error_of(client.post("/v1/audio/transcriptions", json={"model": model}), 400, "multipart/form-data")
    big = {"file": ("a.wav", WAV + b"\0" * 300_000, "audio/wav")}
    error_of(client.post("/v1/audio/transcriptions", files=big, data={"model": model}), 413, "over")


# ---- speech -----------------------------------------------------------------------------------
def test_speech_is_the_whole_file_or_openai_s_sse_events(served):
    client, worker, model = served
    chunks = pcm_chunks(0.2, 16000, 2)

    def speak():
        job = worker.take_job()
        worker.speak(job["request_id"], chunks, rate=16000, fmt="pcm")
        return job

    t, jobs = answer_next(speak)
    body = {"model": model, "input": "Hello there.", "voice": "DB30", "response_format": "pcm", "speed": 1.5}
    resp = client.post("/v1/audio/speech", json=body)
    t.join()
    assert resp.status_code == 200, resp.text
    assert resp.content == b"".join(chunks) and resp.headers["content-type"] == "audio/pcm"
    assert resp.headers["x-bailing-sample-rate"] == "16000"
    assert jobs[0]["speech"]["voice"] == "DB30" and jobs[0]["speech"]["speed"] == 1.5

    t, _ = answer_next(speak)
    resp = client.post("/v1/audio/speech", json={**body, "stream_format": "sse"})
    t.join()
    events = sse_events(resp.content)
    assert [e["type"] for e in events] == ["speech.audio.delta"] * 2 + ["speech.audio.done"]
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == b"".join(chunks)
    assert events[-1]["sample_rate"] == 16000 and events[-1]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "words", "param"),
    [
        ({"voice": "DB30"}, 400, ["input is required"], "input"),
        (
            {"input": "hi", "response_format": "mp3"},
            400,
            ["response_format must be one of"],
            "response_format",
        ),
        ({"input": "hi", "voice": "alloy"}, 400, ["alloy"], None),
        ({"input": "hi", "speed": "fast"}, 400, ["speed must be a number"], "speed"),
        ({"input": "hi", "speed": 9.0}, 400, ["speed"], None),
        ({"input": "hi", "stream_format": "chunks"}, 400, ["stream_format"], "stream_format"),
    ],
)
def test_bad_speech_requests_get_the_openai_error(served, body, status, words, param):
    client, _, model = served
    error_of(client.post("/v1/audio/speech", json={"model": model, **body}), status, *words, param=param)
    error_of(client.post("/v1/audio/speech", content=b"{not json"), 400, "not valid JSON")


# ---- images -----------------------------------------------------------------------------------
def test_image_generation_returns_b64_images_with_their_seeds(served):
    client, worker, model = served
    images = (b"\x89PNG one", b"\x89PNG two")

    def draw():
        job = worker.take_job()
        worker.draw(job["request_id"], images, size=(64, 32), seed=11)
        return job

    t, jobs = answer_next(draw)
    body = {"model": model, "prompt": "a fox", "n": 2, "size": "64x32", "seed": 11, "steps": 3}
    resp = client.post("/v1/images/generations", json=body)
    t.join()
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert [base64.b64decode(d["b64_json"]) for d in out["data"]] == list(images)
    assert [d["seed"] for d in out["data"]] == [11, 12] and out["size"] == "64x32"
    assert out["usage"]["steps"] == 3 and out["usage"]["images"] == 2
    image = jobs[0]["image"]
    assert (image["width"], image["height"], image["num_images"], image["steps"]) == (64, 32, 2, 3)


def test_an_image_edit_uploads_the_image_to_edit(served, redis_url):
    import redis

    client, worker, model = served

    def draw():
        job = worker.take_job()
        worker.draw(job["request_id"], (b"\x89PNG edited",))
        return job

    t, jobs = answer_next(draw)
    resp = client.post(
        "/v1/images/edits",
        files={"image": ("fox.png", PNG, "image/png")},
        data={"model": model, "prompt": "make it blue", "size": "auto"},
    )
    t.join()
    assert resp.status_code == 200, resp.text
    assert base64.b64decode(resp.json()["data"][0]["b64_json"]) == b"\x89PNG edited"
    parts = [p for m in jobs[0]["messages"] for p in m["parts"]]
    (media,) = [p["media"] for p in parts if p["type"] == "image"]
    assert redis.Redis.from_url(redis_url).get(media["key"]) == PNG


@pytest.mark.parametrize(
    ("body", "words", "param"),
    [
        ({}, ["prompt is required"], "prompt"),
        ({"prompt": "x", "size": "big"}, ["size must be"], "size"),
        ({"prompt": "x", "response_format": "url"}, ["b64_json"], "response_format"),
        ({"prompt": "x", "n": "2"}, ["n must be an integer"], "n"),
        ({"prompt": "x", "n": 99}, ["num_images"], None),
        ({"prompt": "x", "style": "vivid"}, ["style"], "style"),
        ({"prompt": "x", "quality": "hd"}, ["quality"], "quality"),
    ],
)
def test_bad_image_requests_get_the_openai_error(served, body, words, param):
    client, _, model = served
    error_of(client.post("/v1/images/generations", json={"model": model, **body}), 400, *words, param=param)


def test_bad_image_edits_get_the_openai_error(served):
    client, _, model = served
    form = {"model": model, "prompt": "blue"}
    error_of(client.post("/v1/images/edits", data=form, files={"x": ("a", b"1")}), 400, "image is required")
    mask = {"image": ("a.png", PNG, "image/png"), "mask": ("m.png", PNG, "image/png")}
    error_of(client.post("/v1/images/edits", data=form, files=mask), 400, "mask", param="mask")
    bad = {"image": ("a.png", b"not an image", "image/png")}
    error_of(client.post("/v1/images/edits", data=form, files=bad), 400, "reference_image")


# ---- spoken chat replies (modalities ["text", "audio"]) ----------------------------------------------
SPOKEN = {"messages": [{"role": "user", "content": "Hi"}], "modalities": ["text", "audio"]}


def test_a_spoken_chat_reply_is_openai_s_message_audio(served):
    client, worker, model = served
    chunks = pcm_chunks(0.2, 16000, 2)

    def say():
        job = worker.take_job()
        spoken_answer(worker, job["request_id"], chunks)
        return job

    t, jobs = answer_next(say)
    body = {"model": model, **SPOKEN, "audio": {"voice": "lingxiao", "format": "wav", "speed": 1.5}}
    resp = client.post("/v1/chat/completions", json=body)
    t.join()
    assert resp.status_code == 200, resp.text
    message = resp.json()["choices"][0]["message"]
    assert message["content"] is None and message["audio"]["transcript"] == "Hello world."
    samples, rate = read_audio(base64.b64decode(message["audio"]["data"]))
    assert rate == 16000 and samples.tobytes() == b"".join(chunks)
    assert (jobs[0]["speech"]["voice"], jobs[0]["speech"]["speed"]) == ("lingxiao", 1.5)

    t, _ = answer_next(say)
    resp = client.post(
        "/v1/chat/completions", json={**body, "audio": {"voice": "DB30", "format": "pcm16"}, "stream": True}
    )
    t.join()
    deltas = [e["choices"][0]["delta"] for e in sse_events(resp.content) if e["choices"]]
    audio = [d["audio"] for d in deltas if "audio" in d]
    assert "".join(a.get("transcript", "") for a in audio) == "Hello world."
    assert b"".join(base64.b64decode(a["data"]) for a in audio if "data" in a) == b"".join(chunks)
    assert not any("content" in d for d in deltas)


@pytest.mark.parametrize(
    ("extra", "words", "param"),
    [
        ({"audio": {"voice": "DB30"}, "modalities": ["text"]}, ["audio needs modalities"], "audio"),
        ({"audio": None}, ["needs audio"], "audio"),
        ({"audio": {"format": "mp3"}}, ["audio.format must be one of"], "audio.format"),
        ({"audio": {"voice": "alloy"}}, ["alloy"], None),
        ({"modalities": ["image"]}, ["modalities must be"], "modalities"),
    ],
)
def test_bad_spoken_chat_requests_get_the_openai_error(served, extra, words, param):
    client, _, model = served
    body = {"model": model, **SPOKEN, "audio": {"voice": "DB30"}, **extra}
    error_of(client.post("/v1/chat/completions", json=body), 400, *words, param=param)
