"""GenerateImage / GenerateImageStream on a real gateway (grpc.aio on a free port, real Redis, the real
Celery queue) with a FakeWorker that parks image bytes under `image_key` as a worker does; also
ListModels' outputs and image items of a batch."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis

from gateway.api import pb, pb_grpc
from pipelines.batches import BatchItemJob, BatchStore, ItemResult, batch_queue_name
from pipelines.protocol import EventType, ImageSummary, cancel_key, image_key, queue_name
from tests.gateway.test_image_convert import BAD, JPEG, PNG

IMAGES = (b"\x89PNG first image", b"\x89PNG second image")
REPO = Path(__file__).resolve().parents[2]


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


def wait_for(predicate, timeout: float, what: str):
    until = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > until:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


def request(model: str, **kw) -> pb.GenerateImageRequest:
    kw.setdefault("prompt", "a red fox")
    return pb.GenerateImageRequest(model=model, **kw)


@pytest.fixture()
def db(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
def served(start_gateway, channel_to, fake_worker, model):
    """(gateway, worker, stub): a model whose one worker draws images (Ming with its heads)."""
    gw = start_gateway((model,))
    worker = fake_worker(model, family="ming", modalities=("text", "image"), outputs=("text", "image"))
    return gw, worker, pb_grpc.InferenceStub(channel_to(gw.address))


def read_all(call) -> tuple[threading.Thread, list]:
    """Read a stream's messages in a thread (they land in the returned list)."""
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(call), daemon=True)
    reader.start()
    return reader, got


# ---- unary ------------------------------------------------------------------------------------
def test_generate_image_returns_the_images_in_order_and_the_summary(served, db, model, caplog):
    gw, worker, stub = served
    req = request(model, width=500, height=300, steps=4, seed=11, num_images=2, request_id="img-u1")
    with caplog.at_level("INFO", logger="bailing.gateway.requests"):
        future = stub.GenerateImage.future(req, timeout=30)
        job = worker.take_job()
        assert (job["task"], job["request_id"], job["prompt"]) == ("image", "img-u1", None)
        assert job["image"]["num_images"] == 2 and job["image"]["seed"] == 11
        assert (job["image"]["width"], job["image"]["height"], job["image"]["steps"]) == (500, 300, 4)
        assert job["messages"] == [
            {
                "role": "user",
                "parts": [{"type": "text", "text": "a red fox", "media": None}],
                "tool_calls": [],
                "tool_call_id": "",
            }
        ]
        keys = worker.draw(
            "img-u1", IMAGES, steps=4, size=(512, 320), requested=(500, 300), seed=11, order=(1, 0)
        )
        resp = future.result(timeout=10)
    assert [(i.index, i.data, i.seed) for i in resp.images] == [(0, IMAGES[0], 11), (1, IMAGES[1], 12)]
    assert {(i.mime_type, i.width, i.height) for i in resp.images} == {("image/png", 512, 320)}
    assert (resp.request_id, resp.model, resp.steps, resp.seed) == ("img-u1", model, 4, 11)
    assert (resp.requested_size.width, resp.requested_size.height) == (500, 300)
    assert (resp.size.width, resp.size.height, resp.guidance_scale) == (512, 320, 4.0)
    assert (resp.usage.prompt_tokens, resp.usage.steps, resp.usage.images) == (5, 4, 2)
    assert resp.timing.total_s >= resp.timing.time_to_first_token_s >= resp.timing.queue_s > 0
    assert db.exists(*keys) == 0  # read once, then deleted
    metric = gw.gateway.metrics.registry.get_sample_value
    labels = {"model": model, "method": "GenerateImage"}
    assert metric("bailing_gateway_requests_total", {**labels, "code": "OK"}) == 1.0
    assert metric("bailing_gateway_images_total", labels) == 2.0
    (line,) = [json.loads(r.message) for r in caplog.records if "img-u1" in r.message]
    assert (line["method"], line["status"], line["images"], line["prompt_tokens"]) == (
        "GenerateImage", "OK", 2, 5,
    )  # fmt: skip
    assert line["ttft_s"] is not None and line["worker"] == worker.worker_id


def test_the_reference_image_is_stored_and_sent_as_an_image_part(served, db, model):
    _, worker, stub = served
    future = stub.GenerateImage.future(
        request(model, prompt="make it blue", reference_image=pb.Media(data=JPEG), request_id="img-e1"),
        timeout=30,
    )
    job = worker.take_job()
    image, text = job["messages"][0]["parts"]
    assert (text["type"], text["text"], image["type"]) == ("text", "make it blue", "image")
    assert image["media"]["mime_type"] == "image/jpeg" and db.get(image["media"]["key"]) == JPEG
    worker.draw("img-e1")
    assert future.result(timeout=10).images[0].data == b"\x89PNG-image-0"


def test_a_missing_image_is_an_internal_error(served, model):
    _, worker, stub = served
    future = stub.GenerateImage.future(request(model, request_id="img-m1"), timeout=30)
    worker.take_job()
    worker.emit("img-m1", EventType.STARTED)
    info = {"index": 0, "key": image_key("img-m1", 0), "mime_type": "image/png"}
    worker.emit("img-m1", EventType.IMAGE, info={**info, "width": 8, "height": 8, "seed": 1, "size": 3})
    with pytest.raises(grpc.RpcError) as err:
        future.result(timeout=10)
    assert err.value.code() is grpc.StatusCode.INTERNAL
    assert err.value.details() == (
        f"image 0 of request img-m1 is missing from Redis (key {image_key('img-m1', 0)}: never written, "
        "or expired)"
    )


def test_images_the_worker_did_not_send_are_an_internal_error(served, model):
    _, worker, stub = served
    future = stub.GenerateImage.future(request(model, num_images=2, request_id="img-m2"), timeout=30)
    worker.take_job()
    worker.emit("img-m2", EventType.STARTED)
    worker.put_image("img-m2", 1, IMAGES[1])
    summary = ImageSummary(0, 0, 64, 64, 3, 4.0, 7, images=2)
    worker.emit("img-m2", EventType.DONE, info=summary.to_info())
    with pytest.raises(grpc.RpcError) as err:
        future.result(timeout=10)
    assert err.value.code() is grpc.StatusCode.INTERNAL
    assert err.value.details() == "request img-m2: the worker reported 2 image(s) but sent indices [1]"


def test_a_unary_answer_over_the_message_limit_points_to_the_stream(
    start_gateway, channel_to, fake_worker, model
):
    gw = start_gateway((model,), max_message_bytes=64 * 1024)
    worker = fake_worker(model, family="ming", outputs=("text", "image"))
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    big = (b"\x89PNG" + b"x" * 40_000, b"\x89PNG" + b"y" * 40_000)
    future = stub.GenerateImage.future(request(model, num_images=2, request_id="img-big"), timeout=30)
    worker.take_job()
    worker.draw("img-big", big)
    with pytest.raises(grpc.RpcError) as err:
        future.result(timeout=10)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than the gateway's max_message_bytes (65536): use GenerateImageStream" in err.value.details()
    call = stub.GenerateImageStream(request(model, num_images=2, request_id="img-big2"), timeout=30)
    assert next(call).WhichOneof("event") == "queued"
    worker.take_job()
    worker.draw("img-big2", big)
    assert [e.image.data for e in call if e.WhichOneof("event") == "image"] == list(big)  # one per message


# ---- stream -----------------------------------------------------------------------------------
def test_stream_is_queued_started_progress_images_done(served, db, model):
    _, worker, stub = served
    call = stub.GenerateImageStream(request(model, num_images=2, request_id="img-s1"), timeout=30)
    first = next(call)  # before the worker took the job: the gateway's own event
    assert (first.request_id, first.WhichOneof("event")) == ("img-s1", "queued")
    worker.take_job()
    reader, events = read_all(call)
    keys = worker.draw("img-s1", IMAGES, steps=5, size=(256, 256), seed=3)
    reader.join(10)
    assert not reader.is_alive()
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["started", *["progress"] * 5, "image", "image", "done"]
    assert events[0].started.worker_id == worker.worker_id
    assert [(e.progress.step, e.progress.steps) for e in events[1:6]] == [(i, 5) for i in range(1, 6)]
    assert [(e.image.index, e.image.data, e.image.seed) for e in events[6:8]] == [
        (0, IMAGES[0], 3),
        (1, IMAGES[1], 4),
    ]
    done = events[-1].done
    assert list(done.images) == [] and (done.size.width, done.steps, done.seed) == (256, 5, 3)
    assert (done.usage.images, done.usage.steps, done.usage.prompt_tokens) == (2, 5, 5)
    assert done.timing.time_to_first_token_s > 0 and {e.request_id for e in events} == {"img-s1"}
    assert db.exists(*keys) == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_worker_error_reaches_the_client_with_its_status(served, model, stream):
    _, worker, stub = served
    rid = f"img-err-{stream}"
    req = request(model, reference_image=pb.Media(data=PNG), request_id=rid)
    if stream:
        call = stub.GenerateImageStream(req, timeout=30)
        assert next(call).WhichOneof("event") == "queued"
    else:
        call = stub.GenerateImage.future(req, timeout=30)
    worker.take_job()
    worker.emit(rid, EventType.STARTED)
    worker.emit(rid, EventType.PROGRESS, info={"step": 1, "steps": 2})
    worker.emit(rid, EventType.ERROR, error_code="INVALID_ARGUMENT", message="reference_image is 2x2 pixels")
    kinds: list[str] = []
    with pytest.raises(grpc.RpcError) as info:
        if stream:
            kinds.extend(e.WhichOneof("event") for e in call)
        else:
            call.result(timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "reference_image is 2x2 pixels"
    if stream:  # what came before the error was relayed
        assert kinds == ["started", "progress"]


def test_a_plain_cancel_of_the_worker_ends_the_call_cancelled(served, model):
    _, worker, stub = served
    future = stub.GenerateImage.future(request(model, request_id="img-pc"), timeout=30)
    worker.take_job()
    worker.emit("img-pc", EventType.STARTED)
    worker.emit("img-pc", EventType.CANCELLED, finish_reason="cancelled")
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=10)
    assert info.value.code() is grpc.StatusCode.CANCELLED


# The client runs in its own process, as in test_service.py: a sync client cancel in the process of
# the grpc.aio server sometimes never reaches it.
_CANCELLING_CLIENT = """
import sys, grpc
from gateway.api import pb, pb_grpc
address, model = sys.argv[1:3]
with grpc.insecure_channel(address) as channel:
    call = pb_grpc.InferenceStub(channel).GenerateImageStream(
        pb.GenerateImageRequest(model=model, prompt="fox", request_id="img-c1"), timeout=30
    )
    assert [next(call).WhichOneof("event") for _ in range(3)] == ["queued", "started", "progress"]
    call.cancel()
"""


def test_cancelling_the_stream_sets_the_cancel_flag(served, db, model):
    gw, worker, _ = served
    client = subprocess.Popen([sys.executable, "-c", _CANCELLING_CLIENT, gw.address, model], cwd=REPO)
    try:
        worker.take_job()
        worker.emit("img-c1", EventType.STARTED)
        worker.emit("img-c1", EventType.PROGRESS, info={"step": 1, "steps": 30})
        assert client.wait(timeout=30) == 0
        # an idle handler may only notice its client left at its next write: keep drawing like a worker
        for step in range(2, 31):
            if db.exists(cancel_key("img-c1")):
                return
            worker.emit("img-c1", EventType.PROGRESS, info={"step": step, "steps": 30})
            time.sleep(0.2)
        raise AssertionError("no cancel flag for img-c1")
    finally:
        client.kill()


# ---- rejected before anything is queued ---------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_requests_are_invalid_argument_and_queue_nothing(served, db, model, kwargs, fragment):
    _, _, stub = served
    req = pb.GenerateImageRequest(**{"model": model, "prompt": "a red fox", **kwargs})
    err = rpc_error(stub.GenerateImage, req, timeout=5)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and fragment in err.details()
    err = rpc_error(lambda: list(stub.GenerateImageStream(req, timeout=5)))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and fragment in err.details()
    assert db.llen(queue_name(model)) == 0


def test_a_model_without_image_output_is_invalid_argument(start_gateway, channel_to, fake_worker, db, model):
    gw = start_gateway((model,))
    fake_worker(model, family="ling")  # announces outputs ("text",)
    stub = pb_grpc.InferenceStub(channel_to(gw.address))
    err = rpc_error(stub.GenerateImage, request(model), timeout=5)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"model {model!r} does not generate images (outputs: text)"
    assert db.llen(queue_name(model)) == 0
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
    assert list(info.outputs) == ["text"]


def test_list_models_shows_outputs(served):
    _, _, stub = served
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
    assert (list(info.outputs), list(info.modalities), info.family) == (
        ["text", "image"],
        ["text", "image"],
        "ming",
    )


# ---- batches ------------------------------------------------------------------------------------
def test_image_batch_items_are_queued_and_their_results_read_back(served, channel_to, db, model):
    gw, _, _ = served
    jobs = pb_grpc.JobsStub(channel_to(gw.address))
    line = {
        "custom_id": "edit",
        "method": "GenerateImage",
        "body": {"prompt": "blue", "referenceImage": {"data": base64.b64encode(PNG).decode()}},
    }
    batch = jobs.CreateBatch(pb.CreateBatchRequest(model=model, jsonl=json.dumps(line).encode()), timeout=10)
    (raw,) = db.lrange(batch_queue_name(model), 0, -1)
    args, _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    item = BatchItemJob.from_dict(args[0])
    assert (item.custom_id, item.job.task, item.job.request_id) == ("edit", "image", f"{batch.id}-0")
    assert db.get(item.job.messages[0].parts[0].media.key) == PNG  # parked until the item runs
    image = {"index": 0, "data": base64.b64encode(b"edited").decode(), "mimeType": "image/png"}
    store = BatchStore(db)
    assert store.write_result(batch.id, ItemResult(0, "edit", image_response={"images": [image]}))
    (result,) = jobs.GetBatchResults(pb.GetBatchResultsRequest(id=batch.id), timeout=10)
    assert (result.custom_id, result.image_response.images[0].data) == ("edit", b"edited")
