"""Image generation in the client and the CLI: request building and reply conversion (no server), then
`generate_image` / `generate_image_stream` (sync and async) and `bailing image` against an in-process
gateway with a FakeWorker (real Redis, real Celery queue, real gRPC)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from bailing.cli import main
from bailing.client import (
    AsyncClient,
    BailingClientError,
    Client,
    GeneratedImageData,
    ImageDone,
    ImageGenerated,
    ImageProgress,
    ImageQueued,
    ImageResult,
    ImageSize,
    ImageStarted,
    ImageUsage,
    Timing,
)
from bailing.client_batch import BatchItemResult, batch_result_from_pb, build_batch_request
from bailing.client_image import build_image_request, image_event_from_pb, image_result_from_pb
from bailing.commands import image as command
from bailing.commands.batch import write_results
from gateway.api import pb
from gateway.config import GatewayConfig
from pipelines.protocol import EventType, cancel_key
from tests.gateway.conftest import FakeWorker, GatewayThread

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 16
DRAWN = (b"\x89PNG image zero", b"\x89PNG image one")
REPO = Path(__file__).resolve().parents[2]


# ---- request building and replies (no server) --------------------------------------------------
def test_only_the_options_given_are_set():
    req = build_image_request("ming", "a red fox")
    assert (req.model, req.prompt, req.width, req.height, req.num_images) == ("ming", "a red fox", 0, 0, 1)
    assert req.output_format == "png" and not req.HasField("reference_image")
    for name in ("steps", "guidance_scale", "image_guidance_scale", "seed", "quality"):
        assert not req.HasField(name), name
    req = build_image_request(
        "ming", "fox", negative_prompt="blur", width=640, height=480, steps=20, guidance_scale=0.0,
        image_guidance_scale=1.5, seed=0, num_images=3, output_format="webp", quality=90,
        request_id="r1", priority=4,
    )  # fmt: skip
    assert (req.negative_prompt, req.width, req.height, req.steps, req.num_images) == (
        "blur",
        640,
        480,
        20,
        3,
    )
    assert (req.guidance_scale, req.image_guidance_scale, req.seed, req.quality) == (0.0, 1.5, 0, 90)
    assert req.HasField("seed") and req.HasField("guidance_scale")  # zero is a value, not "unset"
    assert (req.output_format, req.request_id, req.priority) == ("webp", "r1", 4)


def test_the_reference_image_comes_from_bytes_or_a_path(tmp_path):
    req = build_image_request("ming", "blue", reference_image=PNG)
    assert (req.reference_image.data, req.reference_image.mime_type) == (PNG, "image/png")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    req = build_image_request("ming", "blue", reference_image=photo)
    assert (req.reference_image.data, req.reference_image.mime_type) == (JPEG, "image/jpeg")
    assert build_image_request("ming", "blue", reference_image=str(photo)).reference_image.data == JPEG
    for bad, fragment in [
        (12, "bytes or a file path is required, got int"),
        (tmp_path / "no.png", "cannot read"),
    ]:
        with pytest.raises(BailingClientError, match=fragment) as info:
            build_image_request("ming", "blue", reference_image=bad)
        assert info.value.code == "INVALID_ARGUMENT" and "reference_image" in info.value.details
    with pytest.raises(BailingClientError, match="model: a model name is required"):
        build_image_request("", "fox")
    with pytest.raises(TypeError):
        build_image_request("ming", "fox", sampler="euler")


RESPONSE = pb.GenerateImageResponse(
    request_id="r", model="ming",
    images=[pb.GeneratedImage(index=0, data=b"a", mime_type="image/png", width=64, height=32, seed=9)],
    requested_size=pb.ImageSize(width=60, height=30), size=pb.ImageSize(width=64, height=32),
    steps=30, guidance_scale=4.5, seed=9, usage=pb.ImageUsage(prompt_tokens=12, steps=30, images=1),
    timing=pb.Timing(queue_s=0.1, time_to_first_token_s=2.0, total_s=2.5),
)  # fmt: skip
RESULT = ImageResult(
    "r", "ming", (GeneratedImageData(0, b"a", "image/png", 64, 32, 9),), ImageSize(60, 30), ImageSize(64, 32),
    30, 4.5, 9, ImageUsage(12, 30, 1), Timing(0.1, 2.0, 2.5),
)  # fmt: skip


def test_replies_become_dataclasses():
    assert image_result_from_pb(RESPONSE) == RESULT
    event = pb.GenerateImageEvent
    assert image_event_from_pb(event(request_id="r", queued=pb.ImageQueued())) == ImageQueued("r")
    started = image_event_from_pb(event(request_id="r", started=pb.ImageStarted(worker_id="w1")))
    assert started == ImageStarted("r", "w1")
    progress = image_event_from_pb(event(request_id="r", progress=pb.ImageProgress(step=3, steps=30)))
    assert progress == ImageProgress("r", 3, 30)
    image = image_event_from_pb(event(request_id="r", image=RESPONSE.images[0]))
    assert image == ImageGenerated("r", RESULT.images[0])
    assert image_event_from_pb(event(request_id="r", done=RESPONSE)) == ImageDone("r", RESULT)
    with pytest.raises(BailingClientError, match="unknown kind"):
        image_event_from_pb(event(request_id="r"))


def test_image_results_of_a_batch_are_jsonl_with_base64_bytes(tmp_path):
    got = batch_result_from_pb(pb.BatchResult(index=0, custom_id="fox", image_response=RESPONSE))
    assert got == BatchItemResult(0, "fox", image_response=RESULT)
    line = json.loads(got.to_json_line())
    assert set(line) == {"custom_id", "image_response"} and line["custom_id"] == "fox"
    (image,) = line["image_response"]["images"]
    assert base64.b64decode(image["data"]) == b"a" and image["mime_type"] == "image/png"
    assert line["image_response"]["usage"] == {"prompt_tokens": 12, "steps": 30, "images": 1}
    out = tmp_path / "results.jsonl"
    assert write_results(iter([got]), str(out)) == (1, 0)
    assert json.loads(out.read_text())["image_response"]["size"] == {"width": 64, "height": 32}


def test_batch_items_can_be_image_requests():
    items = [("t", {"prompt": "hi"}), ("i", {"method": "GenerateImage", "prompt": "fox", "num_images": 2})]
    text, image = build_batch_request("ming", None, items).items
    assert text.request.prompt == "hi" and not text.HasField("image_request")
    assert (image.image_request.prompt, image.image_request.num_images) == ("fox", 2)
    with pytest.raises(
        BailingClientError, match=r"items\[0\].method: Generate, GenerateImage or SynthesizeSpeech"
    ):
        build_batch_request("ming", None, [("x", {"method": "Draw", "prompt": "fox"})])


def test_cli_helpers():
    assert command.progress_bar(12, 30, width=10) == "step 12/30 [####......]"
    assert command.progress_bar(30, 30, width=4) == "step 30/30 [####]"
    assert command.progress_bar(0, 0, width=2) == "step 0/0 [..]"
    first = Path("out/fox.png")
    assert [str(command.output_path(first, i)) for i in range(3)] == [
        "out/fox.png",
        "out/fox-1.png",
        "out/fox-2.png",
    ]
    assert command.output_format(None, "fox.JPG") == "jpeg" and command.output_format(None, None) == "png"
    assert command.output_format("webp", "fox.png") == "webp" and command.output_format(None, "fox") == "png"


# ---- against a gateway with a FakeWorker --------------------------------------------------------
@pytest.fixture()
def model() -> str:
    """A model name of this test's own (tests sharing one Redis never see each other's workers)."""
    return f"ming-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def served(redis_url, model):
    """(gateway, worker): one image-generating worker behind an in-process gateway."""
    gw = GatewayThread(GatewayConfig(redis_url=redis_url, models=(model,), port=0)).start()
    worker = FakeWorker(
        redis_url, model, family="ming", modalities=("text", "image"), outputs=("text", "image")
    ).start()
    yield gw, worker
    worker.close()
    gw.stop()


def draw_next(worker: FakeWorker, jobs: list, **kwargs) -> threading.Thread:
    """In a thread: take the next job (appended to `jobs`) and draw its images."""

    def run() -> None:
        jobs.append(worker.take_job())
        n = jobs[-1]["image"]["num_images"]
        worker.draw(jobs[-1]["request_id"], DRAWN[:n], **kwargs)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_client_generate_image_and_stream(served, model, tmp_path):
    gw, worker = served
    jobs: list = []
    photo = tmp_path / "photo.png"
    photo.write_bytes(PNG)
    with Client(gw.address, timeout=30) as client:
        draw_next(worker, jobs, size=(96, 64), seed=5, steps=2)
        out = client.generate_image(model, "a red fox", num_images=2, seed=5, reference_image=photo)
        assert jobs[0]["image"]["seed"] == 5 and jobs[0]["messages"][0]["parts"][0]["type"] == "image"
        assert [(i.index, i.data, i.seed, i.width) for i in out.images] == [
            (0, DRAWN[0], 5, 96),
            (1, DRAWN[1], 6, 96),
        ]
        assert (out.model, out.size, out.steps, out.usage) == (
            model,
            ImageSize(96, 64),
            2,
            ImageUsage(5, 2, 2),
        )
        assert out.images[1].save(tmp_path / "one.png").read_bytes() == DRAWN[1]
        draw_next(worker, jobs, steps=3)
        with client.generate_image_stream(model, "a fox", request_id="img-cs1") as stream:
            events = list(stream)
        kinds = [type(e).__name__ for e in events]
        assert kinds == ["ImageQueued", "ImageStarted", *["ImageProgress"] * 3, "ImageGenerated", "ImageDone"]
        assert [e.step for e in events if isinstance(e, ImageProgress)] == [1, 2, 3]
        assert events[-1].result.images == () and events[-1].result.usage.images == 1
        assert {e.request_id for e in events} == {"img-cs1"}
        (info,) = client.list_models()
        assert (info.outputs, info.modalities) == (("text", "image"), ("text", "image"))
        with pytest.raises(BailingClientError) as err:
            client.generate_image(model, "fox", steps=0)
        assert (
            err.value.code == "INVALID_ARGUMENT" and err.value.details == "steps must be in [1, 200], got 0"
        )
        with pytest.raises(BailingClientError) as err, client.generate_image_stream(model, "") as stream:
            list(stream)
        assert err.value.code == "INVALID_ARGUMENT" and err.value.details.startswith("prompt is empty")


# The client runs in its own process (see tests/gateway/test_service.py: a sync client's cancel in the
# process of the grpc.aio server sometimes never reaches it).
_CLOSING_CLIENT = """
import sys
from bailing.client import Client, ImageQueued, ImageStarted
with Client(sys.argv[1], timeout=30) as client:
    stream = client.generate_image_stream(sys.argv[2], "fox", request_id="img-cc1")
    assert isinstance(next(stream), ImageQueued) and isinstance(next(stream), ImageStarted)
    stream.close()
"""


def test_closing_an_image_stream_cancels_the_request(served, model, redis_url):
    gw, worker = served
    client = subprocess.Popen([sys.executable, "-c", _CLOSING_CLIENT, gw.address, model], cwd=REPO)
    db = redis.Redis.from_url(redis_url)
    try:
        worker.take_job()
        worker.emit("img-cc1", EventType.STARTED)
        assert client.wait(timeout=30) == 0
        for step in range(1, 30):  # a handler may notice its client left only at its next write
            if db.exists(cancel_key("img-cc1")):
                return
            worker.emit("img-cc1", EventType.PROGRESS, info={"step": step, "steps": 30})
            time.sleep(0.2)
        raise AssertionError("no cancel flag for img-cc1")
    finally:
        client.kill()
        db.close()


def test_async_client_generate_image_and_stream(served, model):
    gw, worker = served

    async def run() -> tuple:
        async with AsyncClient(gw.address, timeout=30) as client:
            jobs: list = []
            draw_next(worker, jobs, seed=40)
            out = await client.generate_image(model, "fox", seed=40, output_format="jpeg", quality=80)
            draw_next(worker, jobs, steps=2)
            async with client.generate_image_stream(model, "fox", num_images=2) as stream:
                events = [e async for e in stream]
            try:
                await client.generate_image(model, "fox", width=512)
            except BailingClientError as exc:
                error = exc
            return jobs, out, events, error

    jobs, out, events, error = asyncio.run(run())
    assert (jobs[0]["image"]["output_format"], jobs[0]["image"]["quality"]) == ("jpeg", 80)
    assert [(i.index, i.data, i.seed) for i in out.images] == [(0, DRAWN[0], 40)]
    assert [type(e).__name__ for e in events] == [
        "ImageQueued", "ImageStarted", "ImageProgress", "ImageProgress", "ImageGenerated", "ImageGenerated",
        "ImageDone",
    ]  # fmt: skip
    assert [e.image.data for e in events if isinstance(e, ImageGenerated)] == list(DRAWN)
    assert error.code == "INVALID_ARGUMENT" and "width and height go together" in error.details


# ---- the CLI -----------------------------------------------------------------------------------
def test_cli_writes_each_image_and_says_where(served, model, tmp_path, capsys):
    gw, worker = served
    jobs: list = []
    out = tmp_path / "fox.png"
    thread = draw_next(worker, jobs, seed=3, size=(80, 48), steps=4)
    argv = ["image", "--model", model, "-o", str(out), "--num-images", "2", "--seed", "3", "--steps", "4"]
    argv += ["--width", "80", "--height", "48", "--negative", "blurry", "--address", gw.address, "a red fox"]
    assert main(argv) == 0
    thread.join(5)
    image = jobs[0]["image"]
    assert (image["num_images"], image["seed"], image["steps"], image["negative_prompt"]) == (
        2,
        3,
        4,
        "blurry",
    )
    assert (image["width"], image["height"], image["output_format"]) == (80, 48, "png")
    second = tmp_path / "fox-1.png"
    assert (out.read_bytes(), second.read_bytes()) == DRAWN
    err = capsys.readouterr().err
    assert f"wrote {out} (80x48, {len(DRAWN[0])} bytes, seed 3)" in err
    assert f"wrote {second} (80x48, {len(DRAWN[1])} bytes, seed 4)" in err
    assert "2 image(s) 80x48, 4 steps, seed 3" in err
    assert "\r" not in err and "step 1/4" not in err  # not a terminal: no progress bar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox-1.png", "fox.png"]  # no leftovers


def test_cli_progress_bar_on_a_terminal(served, model, tmp_path, capsys, monkeypatch):
    gw, worker = served
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.chdir(tmp_path)
    jobs: list = []
    draw_next(worker, jobs, steps=2)
    assert main(["image", "--model", model, "--address", gw.address, "--format", "webp", "fox"]) == 0
    assert (tmp_path / "image.webp").read_bytes() == DRAWN[0]  # the default output
    assert jobs[0]["image"]["output_format"] == "webp"
    err = capsys.readouterr().err
    bar = "\r\x1b[Kstep 2/2 [" + "#" * command.BAR_WIDTH + "]"
    assert "\r\x1b[Kstep 1/2 [" in err and bar in err
    assert err.index(bar) < err.index("wrote image.webp")


def test_cli_refuses_to_overwrite_before_connecting(tmp_path, capsys, dead_address, served, model):
    gw, worker = served
    out = tmp_path / "fox.jpg"
    (tmp_path / "fox-1.jpg").write_bytes(b"old")
    argv = ["image", "--model", model, "-o", str(out), "--num-images", "2", "fox"]
    assert main([*argv, "--address", dead_address]) == 2
    assert f"{tmp_path / 'fox-1.jpg'} exists (use --force to overwrite)" in capsys.readouterr().err
    assert main([*argv, "--address", dead_address, "--force"]) == 3  # checked, then no gateway
    assert main(["image", "--model", model, "--edit", str(tmp_path / "nope.png"), "fox"]) == 2
    jobs: list = []
    draw_next(worker, jobs)
    assert main([*argv, "--address", gw.address, "--force"]) == 0
    assert jobs[0]["image"]["output_format"] == "jpeg"  # from the suffix of -o
    assert (out.read_bytes(), (tmp_path / "fox-1.jpg").read_bytes()) == DRAWN


def test_cli_invalid_argument_exits_2(served, model, tmp_path, capsys):
    gw, _ = served
    argv = ["image", "--model", model, "-o", str(tmp_path / "x.png"), "--address", gw.address]
    assert main([*argv, "--quality", "80", "fox"]) == 2
    err = capsys.readouterr().err
    assert "error: INVALID_ARGUMENT: quality applies to jpeg and webp only (output_format is png)" in err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()
