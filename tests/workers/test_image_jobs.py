"""Image jobs through one real `bailing worker --family ming` (the demo checkpoint with its generation
heads, real Redis, real Celery): events, stored PNG bytes, same seed -> same bytes whatever the batch,
editing, negative prompts, cancel and deadline within one step, and bad input that leaves the worker
serving text and understanding."""

from __future__ import annotations

import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from pipelines.protocol import (
    CANCEL_CHANNEL,
    ChatMessage,
    ErrorCode,
    EventType,
    GenerateJob,
    ImageInfo,
    ImageOptions,
    ImageSummary,
    MediaRef,
    Part,
    Sampling,
    WorkerInfo,
    cancel_key,
    media_key,
    worker_info_key,
)
from tests.models.ming.processing_media import gradient_jpeg
from tests.workers.helpers import WorkerProcess, free_port, new_id, read_events, send

pytestmark = pytest.mark.slow
NAME = "ming-images"
FAST = {"width": 512, "height": 512, "steps": 3}


@pytest.fixture(scope="module")
def worker(redis_url, demo_ming, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    w = WorkerProcess(redis_url, demo_ming, log, NAME, "--metrics-port", str(port), family="ming")
    w.metrics_port = port
    try:
        w.wait_registered(120)
        yield w
    finally:
        w.close()


def image_job(prompt: str = "a red fox", *, reference: MediaRef | None = None, **options) -> GenerateJob:
    parts = (
        (Part("text", text=prompt),)
        if reference is None
        else (Part("image", media=reference), Part("text", text=prompt))
    )
    opts = ImageOptions(**({"seed": 7} | FAST | options))
    return GenerateJob(new_id(), NAME, messages=(ChatMessage("user", parts),), task="image", image=opts)


def run(sender, rds, job: GenerateJob, timeout: float = 120.0):
    send(sender, job)
    return read_events(rds, job.request_id, timeout)


def images(rds, events) -> list[tuple[ImageInfo, bytes]]:
    found = [ImageInfo.from_info(e.info) for e in events if e.type == EventType.IMAGE]
    return [(info, rds.get(info.key)) for info in found]


def park(rds, data: bytes, mime: str) -> MediaRef:
    key = media_key(hashlib.sha256(data).hexdigest())
    rds.set(key, data, ex=600)
    return MediaRef("image", key, mime, len(data))


def test_the_worker_announces_image_output(worker, rds):
    info = WorkerInfo.from_json(rds.get(worker_info_key(worker.worker_id)))
    assert info.outputs == ("text", "image")


def test_text_to_image_events_and_png(worker, sender, rds):
    events = run(sender, rds, image_job(num_images=2))
    kinds = [e.type for e in events]
    assert kinds[0] == EventType.STARTED and kinds[-1] == EventType.DONE
    steps = [e.info["step"] for e in events if e.type == EventType.PROGRESS]
    assert steps == [1, 2, 3] and {e.info["steps"] for e in events if e.type == EventType.PROGRESS} == {3}
    got = images(rds, events)
    assert [info.index for info, _ in got] == [0, 1] and [info.seed for info, _ in got] == [7, 8]
    for info, data in got:
        img = Image.open(io.BytesIO(data))
        assert (img.format, img.size, info.size) == ("PNG", (512, 512), len(data))
    assert got[0][1] != got[1][1]
    summary = ImageSummary.from_info(events[-1].info)
    assert (summary.width, summary.height, summary.steps, summary.seed, summary.images) == (512, 512, 3, 7, 2)
    assert summary.guidance_scale == 2.0  # the 2.0 variant's default
    assert events[-1].usage.prompt_tokens > 20 and events[-1].usage.forwards == 3


def test_same_seed_same_bytes_alone_and_among_three(worker, sender, rds):
    solo = images(rds, run(sender, rds, image_job("a lighthouse", seed=11)))[0][1]
    again = images(rds, run(sender, rds, image_job("a lighthouse", seed=11)))[0][1]
    assert solo == again
    jobs = [image_job("a lighthouse", seed=11), image_job("a cat", seed=12), image_job("a dog", seed=13)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda j: run(sender, rds, j), jobs))
    assert images(rds, results[0])[0][1] == solo
    # the second image of a two-image request with seed 10 is the image of seed 11
    pair = images(rds, run(sender, rds, image_job("a lighthouse", seed=10, num_images=2)))
    assert pair[1][1] == solo


def test_a_negative_prompt_changes_the_image(worker, sender, rds):
    plain = images(rds, run(sender, rds, image_job("a boat")))[0][1]
    steered = images(rds, run(sender, rds, image_job("a boat", negative_prompt="blurry, dark")))[0][1]
    assert plain != steered


def test_editing_a_jpeg(worker, sender, rds):
    ref = park(rds, gradient_jpeg(), "image/jpeg")
    events = run(sender, rds, image_job("make the sky blue", reference=ref, output_format="jpeg", quality=80))
    assert events[-1].type == EventType.DONE, events[-1]
    ((info, data),) = images(rds, events)
    img = Image.open(io.BytesIO(data))
    # the reference is 128x96 (ratio 0.75): the 512 tier's nearest bucket is 576x416
    assert (img.format, img.size, info.mime_type) == ("JPEG", (576, 416), "image/jpeg")


def test_cancel_mid_loop_stops_within_a_step(worker, sender, rds):
    job = image_job(steps=200)
    send(sender, job)
    read_events(rds, job.request_id, 60, until=lambda e: e.type == EventType.PROGRESS and e.info["step"] >= 2)
    rds.set(cancel_key(job.request_id), "1", ex=60)
    rds.publish(CANCEL_CHANNEL, job.request_id)
    t0 = time.monotonic()
    events = read_events(rds, job.request_id, 30)
    assert events[-1].type == EventType.CANCELLED and events[-1].error_code == ErrorCode.CANCELLED
    assert time.monotonic() - t0 < 5
    steps = [e.info["step"] for e in events if e.type == EventType.PROGRESS]
    assert max(steps) < 200 and not [e for e in events if e.type == EventType.IMAGE]
    # the stage is empty again: a new request runs at once
    assert run(sender, rds, image_job())[-1].type == EventType.DONE


def test_a_deadline_ends_the_loop(worker, sender, rds):
    job = image_job(steps=200)
    job = GenerateJob(**{**job.__dict__, "deadline": time.time() + 2.0})
    events = run(sender, rds, job, 60)
    assert events[-1].type == EventType.CANCELLED and events[-1].error_code == ErrorCode.DEADLINE_EXCEEDED
    assert [e for e in events if e.type == EventType.PROGRESS]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 10_000}, "steps"),
        ({"width": 4000, "height": 100}, "aspect ratio"),
        ({"width": 512, "height": None}, "width and height"),
        ({"num_images": 9}, "num_images"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"output_format": "gif"}, "output_format"),
        ({"quality": 50}, "quality"),
    ],
)
def test_bad_options_are_invalid_arguments(worker, sender, rds, options, field):
    events = run(sender, rds, image_job(**options))
    assert events[-1].type == EventType.ERROR and events[-1].error_code == ErrorCode.INVALID_ARGUMENT
    assert field in events[-1].message


def test_a_corrupt_reference_is_refused_and_the_worker_serves_on(worker, sender, rds):
    ref = park(rds, b"\x89PNG\r\n\x1a\n not really a png", "image/png")
    events = run(sender, rds, image_job("edit this", reference=ref))
    assert events[-1].error_code == ErrorCode.INVALID_ARGUMENT and "reference_image" in events[-1].message
    text = GenerateJob(new_id(), NAME, prompt="hello", sampling=Sampling(max_tokens=3, temperature=0.0))
    assert run(sender, rds, text)[-1].type == EventType.DONE
    photo = park(rds, gradient_jpeg(), "image/jpeg")
    question = ChatMessage("user", (Part("image", media=photo), Part("text", text="what?")))
    look = GenerateJob(new_id(), NAME, messages=(question,), sampling=Sampling(max_tokens=3, temperature=0.0))
    assert run(sender, rds, look)[-1].type == EventType.DONE
