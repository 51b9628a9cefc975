"""GenerateJob's task field (and an image job's options) through the Celery payload (JSON) round trip;
the events and worker facts image generation adds."""

from __future__ import annotations

import json

import pytest

from pipelines.protocol import (
    TASKS,
    ChatMessage,
    Event,
    EventType,
    GenerateJob,
    ImageInfo,
    ImageOptions,
    ImageSummary,
    MediaRef,
    Part,
    Sampling,
    WorkerInfo,
    image_key,
)


def _round_trip(job: GenerateJob) -> GenerateJob:
    return GenerateJob.from_dict(json.loads(json.dumps(job.to_dict())))


def test_tasks():
    assert TASKS == ("generate", "transcribe", "image", "speech")
    job = GenerateJob(request_id="r", model="ling", prompt="hi")
    assert job.task == "generate"


def test_transcribe_job_round_trips():
    audio = MediaRef(kind="audio", key="bailing:media:ab", mime_type="audio/wav", size=48)
    job = GenerateJob(
        request_id="r",
        model="ming",
        messages=(ChatMessage(role="user", parts=(Part(type="audio", media=audio),)),),
        sampling=Sampling(max_tokens=32),
        task="transcribe",
    )
    assert job.to_dict()["task"] == "transcribe"
    assert _round_trip(job) == job


def test_payload_without_task_is_a_generate_job():
    payload = GenerateJob(request_id="r", model="ling", prompt="hi").to_dict()
    del payload["task"]  # as a gateway from before Transcribe sends it
    job = GenerateJob.from_dict(json.loads(json.dumps(payload)))
    assert (job.task, job.prompt) == ("generate", "hi")


def test_unknown_task_is_an_error_naming_the_field():
    payload = {**GenerateJob(request_id="r", model="ling", prompt="hi").to_dict(), "task": "translate"}
    expected = r"task must be one of generate, transcribe, image, speech, got 'translate'"
    with pytest.raises(ValueError, match=expected):
        GenerateJob.from_dict(payload)


def test_image_job_round_trips():
    ref = MediaRef(kind="image", key="bailing:media:cd", mime_type="image/png", size=99)
    job = GenerateJob(
        request_id="r",
        model="ming",
        messages=(
            ChatMessage(role="user", parts=(Part(type="image", media=ref), Part(type="text", text="red"))),
        ),
        task="image",
        image=ImageOptions(width=512, height=768, steps=4, seed=7, num_images=2, output_format="webp"),
    )
    assert _round_trip(job) == job


def test_image_options_go_with_the_image_task_only():
    with pytest.raises(ValueError, match="image options go with task 'image'"):
        GenerateJob(request_id="r", model="ming", prompt="a fox", task="image")
    with pytest.raises(ValueError, match="image options go with task 'image'"):
        GenerateJob(request_id="r", model="ming", prompt="a fox", image=ImageOptions())


def test_image_events_round_trip():
    info = ImageInfo(
        index=1, key=image_key("r", 1), mime_type="image/png", width=64, height=96, seed=8, size=5
    )
    event = Event(3, EventType.IMAGE, info=info.to_info())
    assert ImageInfo.from_info(Event.decode(event.encode()).info) == info
    summary = ImageSummary(0, 0, 96, 64, 4, 2.0, 7, 2)
    done = Event(4, EventType.DONE, info=summary.to_info())
    assert ImageSummary.from_info(Event.decode(done.encode()).info) == summary


def test_worker_outputs_default_to_text():
    base = WorkerInfo("w", "ming", "ming", "h", 1, "cpu", 8, 4096)
    assert WorkerInfo.from_json(base.to_json()).outputs == ("text",)
    both = WorkerInfo("w", "ming", "ming", "h", 1, "cpu", 8, 4096, outputs=("text", "image"))
    assert WorkerInfo.from_json(both.to_json()).outputs == ("text", "image")
