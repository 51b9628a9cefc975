"""Ming image generation through the whole service: real Redis, `bailing gateway` + `bailing worker
--family ming` subprocesses on the demo checkpoint with its generation heads, real gRPC.

GenerateImage returns a decodable PNG of the snapped size; the stream shows queued, started,
increasing steps, the images, done; editing a real JPEG; same seed -> same bytes across two calls and
three concurrent requests; cancel mid-loop frees the request; bad sizes, 0 steps and a corrupt
reference are INVALID_ARGUMENT while the worker keeps serving text and understanding; a batch with
image items; the `bailing image` CLI.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import json_format
from PIL import Image

from gateway.api import pb, pb_grpc
from tests.models.ming.processing_media import gradient_jpeg
from tests.service.procs import Processes

pytestmark = pytest.mark.slow
MODEL = "ming-draw"
FAST = {"width": 512, "height": 512, "steps": 3}


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory, demo_ming):
    procs = Processes(redis_url, tmp_path_factory.mktemp("ming-image-logs"))
    try:
        worker = procs.worker(demo_ming, MODEL, family="ming")
        yield procs.gateway(MODEL), worker
    finally:
        procs.close()


@pytest.fixture()
def stub(service):
    with grpc.insecure_channel(service[0]) as ch:
        yield pb_grpc.InferenceStub(ch)


def request(prompt: str = "a red fox", **fields) -> pb.GenerateImageRequest:
    values = {"seed": 7} | FAST | fields
    return pb.GenerateImageRequest(model=MODEL, prompt=prompt, **values)


def test_list_models_shows_the_image_output(stub):
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
    assert list(info.outputs) == ["text", "image"]


def test_generate_image_returns_a_png_of_the_snapped_size(stub):
    out = stub.GenerateImage(request(width=600, height=400), timeout=120)
    (img,) = out.images
    decoded = Image.open(io.BytesIO(img.data))
    assert (decoded.format, decoded.size) == ("PNG", (608, 416))  # the 512 tier's bucket for 2:3
    assert (img.width, img.height, img.mime_type, img.seed) == (608, 416, "image/png", 7)
    assert (out.requested_size.width, out.requested_size.height) == (600, 400)
    assert (out.size.width, out.size.height, out.steps, out.seed) == (608, 416, 3, 7)
    assert out.usage.prompt_tokens > 0 and out.usage.steps == 3 and out.usage.images == 1
    assert out.timing.total_s > 0


def test_the_stream_shows_monotonically_increasing_steps(stub):
    events = list(stub.GenerateImageStream(request(steps=5, num_images=2), timeout=120))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "done"
    steps = [e.progress.step for e in events if e.WhichOneof("event") == "progress"]
    assert steps == [1, 2, 3, 4, 5]
    images = [e.image for e in events if e.WhichOneof("event") == "image"]
    assert [i.index for i in images] == [0, 1] and [i.seed for i in images] == [7, 8]
    assert events[-1].done.steps == 5 and not events[-1].done.images


def test_same_seed_same_bytes_across_calls_and_concurrency(stub):
    first = stub.GenerateImage(request("a lighthouse", seed=21), timeout=120).images[0].data
    second = stub.GenerateImage(request("a lighthouse", seed=21), timeout=120).images[0].data
    assert first == second
    reqs = [request("a lighthouse", seed=21), request("a cat", seed=5), request("a dog", seed=6)]
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda r: stub.GenerateImage(r, timeout=180), reqs))
    assert outs[0].images[0].data == first
    assert len({o.images[0].data for o in outs}) == 3


def test_editing_a_real_jpeg(stub):
    ref = pb.Media(data=gradient_jpeg(), mime_type="image/jpeg")
    out = stub.GenerateImage(request("make the sky purple", reference_image=ref), timeout=120)
    img = Image.open(io.BytesIO(out.images[0].data))
    assert img.size == (576, 416)  # the reference's 4:3 ratio in the requested 512 tier


def test_cancel_mid_loop_frees_the_request(stub, service):
    worker = service[1]
    call = stub.GenerateImageStream(request(steps=200), timeout=120)
    for event in call:
        if event.WhichOneof("event") == "progress" and event.progress.step >= 2:
            break
    call.cancel()
    until = time.monotonic() + 10
    while worker.metric("bailing_worker_image_jobs") > 0 and time.monotonic() < until:
        time.sleep(0.1)
    assert worker.metric("bailing_worker_image_jobs") == 0
    assert stub.GenerateImage(request(), timeout=60).images  # the stage serves the next one


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"width": 4000, "height": 100}, "height / width"),
        ({"width": 512, "height": 0}, "width"),
        ({"steps": 0}, "steps"),
        (
            {"reference_image": pb.Media(data=b"\x89PNG\r\n\x1a\n broken", mime_type="image/png")},
            "reference_image",
        ),
    ],
)
def test_bad_requests_are_invalid_and_the_worker_keeps_serving(stub, fields, named):
    with pytest.raises(grpc.RpcError) as err:
        stub.GenerateImage(request(**fields), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and named in err.value.details()
    text = pb.GenerateRequest(model=MODEL, prompt="hello", sampling=pb.SamplingParams(max_tokens=3))
    assert stub.Generate(text, timeout=60).finish_reason in ("stop", "length")
    look = pb.GenerateRequest(
        model=MODEL,
        messages=[pb.Message(role="user", content=[
            pb.ContentPart(image=pb.Media(data=gradient_jpeg(), mime_type="image/jpeg")),
            pb.ContentPart(text="what?"),
        ])],
        sampling=pb.SamplingParams(max_tokens=3),
    )  # fmt: skip
    assert stub.Generate(look, timeout=60).usage.prompt_tokens > 10


def test_a_batch_with_image_items(stub, service):
    from tests.service.test_batch_e2e import wait_batch

    with grpc.insecure_channel(service[0]) as channel:
        jobs = pb_grpc.JobsStub(channel)
        inline = pb.BatchItem(custom_id="a", image_request=request("a tree", seed=3))
        body = json_format.MessageToDict(request("a tree", seed=3, steps=2))
        line = json.dumps({"custom_id": "b", "method": "GenerateImage", "body": body}).encode()
        first = jobs.CreateBatch(pb.CreateBatchRequest(model=MODEL, items=[inline]), timeout=60)
        second = jobs.CreateBatch(pb.CreateBatchRequest(model=MODEL, jsonl=line), timeout=60)
        for batch, steps in ((first, 3), (second, 2)):
            assert wait_batch(jobs, batch.id, timeout=300).counts.completed == 1
            (result,) = jobs.GetBatchResults(pb.GetBatchResultsRequest(id=batch.id), timeout=60)
            assert result.image_response.steps == steps
            png = result.image_response.images[0].data
            assert Image.open(io.BytesIO(png)).size == (512, 512)
            as_json = json_format.MessageToDict(result)
            assert base64.b64decode(as_json["imageResponse"]["images"][0]["data"]) == png
        interactive = stub.GenerateImage(request("a tree", seed=3), timeout=120)
        (inline_result,) = jobs.GetBatchResults(pb.GetBatchResultsRequest(id=first.id), timeout=60)
        assert inline_result.image_response.images[0].data == interactive.images[0].data


def test_the_image_cli(service, tmp_path):
    out = tmp_path / "fox.png"
    cmd = [sys.executable, "-m", "bailing.cli", "image", "--address", service[0], "--model", MODEL]
    done = subprocess.run(
        [*cmd, "--steps", "2", "--width", "512", "--height", "512", "--seed", "1", "-o", str(out), "a fox"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert Image.open(out).size == (512, 512) and b"fox.png" in done.stderr
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(gradient_jpeg())
    edited = tmp_path / "edit.png"
    done = subprocess.run(
        [*cmd, "--steps", "2", "--width", "512", "--height", "512", "--edit", str(photo), "-o", str(edited),
         "make it blue"],
        capture_output=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    bad = subprocess.run(
        [*cmd, "--steps", "0", "-o", str(tmp_path / "x.png"), "a"], capture_output=True, timeout=60
    )
    assert bad.returncode == 2 and b"steps" in bad.stderr
