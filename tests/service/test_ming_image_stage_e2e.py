"""The diffusion stage as a worker of its own: a thinker worker started with `--image-stage remote`
hands each image request (its condition tensors through Redis) to a `--role image-stage` worker,
which writes the rest of the request's stream. Real Redis, gateway and worker subprocesses, gRPC.

The split pair gives the same bytes as a worker that does both; the stream is one stream (steps
increasing, one terminal); cancel reaches the stage worker; with no stage worker alive the request
is UNAVAILABLE at once; the stage worker takes no text work.
"""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from gateway.api import pb, pb_grpc
from pipelines.protocol import stage_workers_key
from tests.models.ming.processing_media import gradient_jpeg
from tests.service.procs import Processes, Worker, free_port

pytestmark = pytest.mark.slow
LOCAL, SPLIT = "ming-whole", "ming-split"
FAST = {"width": 512, "height": 512, "steps": 3, "seed": 9}


def start_stage(procs: Processes, model_dir, name: str, timeout: float = 120.0) -> Worker:
    worker_id, port = f"{name}-stage@test-{uuid.uuid4().hex[:6]}", free_port()
    child = procs._start(
        f"stage-{name}", "worker", "--family", "ming", "--model", str(model_dir), "--name", name,
        "--role", "image-stage", "--worker-id", worker_id, "--metrics-port", str(port),
    )  # fmt: skip
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if procs.redis.zscore(stage_workers_key(name), worker_id) is not None:
            return Worker(child, worker_id, port)
        assert child.exit_code() is None, child.describe()
        time.sleep(0.05)
    raise AssertionError(f"stage worker not registered in {timeout} s: {child.describe()}")


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory, demo_ming):
    procs = Processes(redis_url, tmp_path_factory.mktemp("ming-stage-logs"))
    try:
        procs.worker(demo_ming, LOCAL, family="ming")
        procs.worker(demo_ming, SPLIT, "--image-stage", "remote", family="ming")
        stage = start_stage(procs, demo_ming, SPLIT)
        yield procs.gateway(LOCAL, SPLIT), stage
    finally:
        procs.close()


@pytest.fixture()
def stub(service):
    with grpc.insecure_channel(service[0]) as ch:
        yield pb_grpc.InferenceStub(ch)


def request(model: str, prompt: str = "a red fox", **fields) -> pb.GenerateImageRequest:
    return pb.GenerateImageRequest(model=model, prompt=prompt, **(FAST | fields))


def test_the_split_pair_gives_the_bytes_of_a_whole_worker(stub):
    events = list(stub.GenerateImageStream(request(SPLIT, num_images=2), timeout=120))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "queued" and kinds.count("started") == 2 and kinds[-1] == "done"
    assert [e.progress.step for e in events if e.WhichOneof("event") == "progress"] == [1, 2, 3]
    split = [e.image.data for e in events if e.WhichOneof("event") == "image"]
    whole = stub.GenerateImage(request(LOCAL, num_images=2), timeout=120)
    assert split == [i.data for i in whole.images]
    assert events[-1].done.usage.prompt_tokens == whole.usage.prompt_tokens


def test_an_edit_and_a_negative_prompt_cross_over_too(stub):
    ref = pb.Media(data=gradient_jpeg(), mime_type="image/jpeg")
    fields = {"reference_image": ref, "negative_prompt": "blurry"}
    split = stub.GenerateImage(request(SPLIT, "make it blue", **fields), timeout=120)
    whole = stub.GenerateImage(request(LOCAL, "make it blue", **fields), timeout=120)
    assert split.images[0].data == whole.images[0].data and split.size.width == 576


def test_cancel_reaches_the_stage_worker(stub, service):
    stage = service[1]
    call = stub.GenerateImageStream(request(SPLIT, steps=200), timeout=120)
    for event in call:
        if event.WhichOneof("event") == "progress" and event.progress.step >= 2:
            break
    call.cancel()
    until = time.monotonic() + 10
    while stage.metric("bailing_worker_image_jobs") > 0 and time.monotonic() < until:
        time.sleep(0.1)
    assert stage.metric("bailing_worker_image_jobs") == 0
    assert stub.GenerateImage(request(SPLIT), timeout=60).images


def test_text_still_goes_to_the_thinker_worker(stub):
    text = pb.GenerateRequest(model=SPLIT, prompt="hi", sampling=pb.SamplingParams(max_tokens=3))
    out = stub.Generate(text, timeout=60)
    assert out.usage.completion_tokens > 0


def test_the_container_healthcheck_sees_the_stage_worker(service, redis_url):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "bailing.cli", "healthcheck", "--worker", SPLIT, "--redis-url", redis_url]
    stage = subprocess.run([*cmd, "--image-stage"], capture_output=True, timeout=60)
    assert stage.returncode == 0 and b"1 live image-stage worker(s)" in stage.stdout
    thinkers = subprocess.run(cmd, capture_output=True, timeout=60)
    assert thinkers.returncode == 0 and b"1 live worker(s)" in thinkers.stdout  # the thinker only


def test_without_a_stage_worker_the_request_is_unavailable(stub, service):
    service[1].kill()  # the last test of the module: the stage worker is gone for good
    until = time.monotonic() + 10
    while time.monotonic() < until:
        try:
            stub.GenerateImage(request(SPLIT), timeout=60)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "image-stage" in err.details()
            return
        time.sleep(0.5)  # its heartbeat has not expired yet
    raise AssertionError("requests still succeed without a stage worker")
