"""GenerateJob's task field through the Celery payload (JSON) round trip."""

from __future__ import annotations

import json

import pytest

from pipelines.protocol import TASKS, ChatMessage, GenerateJob, MediaRef, Part, Sampling


def _round_trip(job: GenerateJob) -> GenerateJob:
    return GenerateJob.from_dict(json.loads(json.dumps(job.to_dict())))


def test_tasks():
    assert TASKS == ("generate", "transcribe")
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
    with pytest.raises(ValueError, match=r"task must be one of generate, transcribe, got 'translate'"):
        GenerateJob.from_dict(payload)
