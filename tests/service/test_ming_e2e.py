"""Ming through the whole service (issue #8): real Redis, `bailing gateway` + `bailing worker --family
ming` subprocesses, real gRPC, on the demo Ming checkpoint, with media files made here (JPEG and PNG
by Pillow, WAV and MP3 of synthesised tones, an MP4 by PyAV).

Checks each medium's answer and usage against the offline engine on the same bytes, streaming,
Transcribe, concurrent text + media requests, the CLI, and that each bad input (corrupt bytes, a 1x1
image, a 100-megapixel PNG header, 0 s of audio, a wrong mime type) gets INVALID_ARGUMENT naming the
part while the worker keeps serving.
"""

from __future__ import annotations

import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from engine.engine import EngineConfig, LLMEngine
from engine.multimodal import MediaInputs
from engine.sampling_params import SamplingParams
from gateway.api import pb, pb_grpc
from models.ming.processing import MingProcessor
from tests.models.ming.processing_media import mp3_bytes, mp4_bytes, png_header_only, ramp_video, wav_bytes
from tests.service.procs import Processes

pytestmark = pytest.mark.slow
MODEL = "ming-e2e"
MAX_TOKENS = 6
RATE = 16000


def photo(height: int = 96, width: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 2) % 256, (y * 3) % 256, ((x + y) * 5) % 256], axis=-1).astype(np.uint8)


def image_bytes(fmt: str, pixels: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo() if pixels is None else pixels).save(buf, format=fmt)
    return buf.getvalue()


def tones(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.3 * np.sin(2 * np.pi * 330 * t) + 0.2 * np.sin(2 * np.pi * 880 * t)).astype(np.float32)


MEDIA = {
    "jpeg": ("image", "image/jpeg", lambda: image_bytes("JPEG")),
    "png": ("image", "image/png", lambda: image_bytes("PNG")),
    "wav": ("audio", "audio/wav", lambda: wav_bytes(tones(), RATE, "PCM_16")),
    "mp3": ("audio", "audio/mpeg", lambda: mp3_bytes(tones(1.5), RATE)),
    "mp4": ("video", "video/mp4", lambda: mp4_bytes(ramp_video(8, 56, 56), fps=4)),
}


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory, demo_ming):
    procs = Processes(redis_url, tmp_path_factory.mktemp("ming-logs"))
    try:
        worker = procs.worker(demo_ming, MODEL, family="ming")
        yield procs.gateway(MODEL), worker
    finally:
        procs.close()


@pytest.fixture()
def stub(service):
    with grpc.insecure_channel(service[0]) as ch:
        yield pb_grpc.InferenceStub(ch)


@pytest.fixture(scope="module")
def offline(demo_ming):
    """The same checkpoint on an in-process engine + processor: what the service must answer."""
    engine = LLMEngine(demo_ming, "cpu", torch.float32, EngineConfig(num_kv_blocks=64))
    processor = MingProcessor.from_pretrained(demo_ming)

    def answer(kind: str | None, data: bytes | None, question: str) -> tuple[str, int, int]:
        content = [{"type": "text", "text": question}] + ([{"type": kind}] if kind else [])
        media = {f"{kind}s": [data]} if kind else {}
        inputs = processor.process([{"role": "user", "content": content}], **media)
        tensors = inputs.media()
        ids = inputs.input_ids[0].tolist()
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
        engine.add_request(
            ids, params, request_id=f"{kind}-{len(ids)}", media=MediaInputs(tensors) if tensors else None
        )
        out = None
        while out is None or not out.finished:
            out = next((o for o in engine.step() if o.finished), out)
        return out.text, len(ids), len(out.token_ids)

    return answer


def media_request(kind: str | None, mime: str, data: bytes | None, question: str = "what is this?"):
    content = [pb.ContentPart(text=question)]
    if kind:
        content.append(pb.ContentPart(**{kind: pb.Media(data=data, mime_type=mime)}))
    return pb.GenerateRequest(
        model=MODEL,
        messages=[pb.Message(role="user", content=content)],
        sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
    )


@pytest.mark.parametrize("name", list(MEDIA))
def test_each_medium_answers_as_the_offline_engine_does(stub, offline, name):
    kind, mime, make = MEDIA[name]
    data = make()
    out = stub.Generate(media_request(kind, mime, data), timeout=120)
    text, prompt_tokens, completion_tokens = offline(kind, data, "what is this?")
    assert (
        out.usage.prompt_tokens == prompt_tokens
    )  # media placeholders counted as the processor expands them
    assert out.usage.completion_tokens == completion_tokens > 0
    assert out.text == text and out.finish_reason in ("stop", "length")


def test_a_text_only_request_to_ming(stub, offline):
    out = stub.Generate(media_request(None, "", None, "hello there"), timeout=120)
    text, prompt_tokens, _ = offline(None, None, "hello there")
    assert (out.text, out.usage.prompt_tokens) == (text, prompt_tokens)


def test_streaming_an_image_answer_equals_unary(stub):
    req = media_request("image", "image/png", image_bytes("PNG"))
    unary = stub.Generate(req, timeout=120)
    chunks = list(stub.GenerateStream(req, timeout=120))
    assert "".join(c.text for c in chunks) == unary.text
    assert chunks[-1].usage.prompt_tokens == unary.usage.prompt_tokens


def test_concurrent_text_and_media_requests_equal_their_solo_answers(stub):
    reqs = [
        media_request(None, "", None, "one"),
        media_request("image", "image/jpeg", image_bytes("JPEG")),
        media_request("audio", "audio/wav", wav_bytes(tones(), RATE, "PCM_16")),
        media_request(None, "", None, "two words"),
        media_request("image", "image/png", image_bytes("PNG", photo(64, 64))),
    ]
    solo = [stub.Generate(r, timeout=120).text for r in reqs]
    with ThreadPoolExecutor(len(reqs)) as pool:
        together = list(pool.map(lambda r: stub.Generate(r, timeout=120).text, reqs))
    assert together == solo


def test_transcribe_unary_and_stream(stub, offline):
    audio = wav_bytes(tones(), RATE, "PCM_16")
    req = pb.TranscribeRequest(
        model=MODEL,
        audio=pb.Media(data=audio, mime_type="audio/wav"),
        sampling=pb.SamplingParams(max_tokens=8, temperature=0.0),
    )
    out = stub.Transcribe(req, timeout=120)
    assert out.usage.completion_tokens > 0 and out.finish_reason in ("stop", "length")
    streamed = list(stub.TranscribeStream(req, timeout=120))
    assert "".join(c.text for c in streamed) == out.text
    with pytest.raises(grpc.RpcError) as err:
        stub.Transcribe(
            pb.TranscribeRequest(model=MODEL, audio=pb.Media(data=image_bytes("PNG"))), timeout=60
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "audio" in err.value.details()


def silence_wav() -> bytes:
    return wav_bytes(np.zeros(0, dtype=np.float32), RATE, "PCM_16")


BAD = {  # name: (part kind, mime type, bytes or None = made by bad_bytes, what the error must say)
    "corrupt png": (
        "image",
        "image/png",
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "not a decodable image",
    ),
    "corrupt wav": (
        "audio",
        "audio/wav",
        b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk" * 8,
        "not a decodable audio",
    ),
    "1x1 image": ("image", "image/png", None, "is 1x1 pixels"),
    "100-megapixel png header": ("image", "image/png", png_header_only(10240, 10240), "more than the limit"),
    "0 s audio": ("audio", "audio/wav", None, "is 0.000 s long"),
    "wrong mime type": ("image", "image/jpeg", None, "does not match the bytes"),
    "audio bytes as an image": ("image", "image/png", None, "they look like wav audio"),
}


def bad_bytes(name: str, data: bytes | None) -> bytes:
    if data is not None:
        return data
    return {
        "1x1 image": lambda: image_bytes("PNG", photo(1, 1)),
        "0 s audio": silence_wav,
        "wrong mime type": lambda: image_bytes("PNG"),  # PNG bytes said to be JPEG
        "audio bytes as an image": lambda: wav_bytes(tones(), RATE, "PCM_16"),
    }[name]()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_media_is_invalid_argument_and_the_worker_keeps_serving(stub, service, name):
    kind, mime, data, expect = BAD[name]
    req = media_request(kind, mime, bad_bytes(name, data))
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(req, timeout=120)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    details = err.value.details()
    assert f"messages[0].content[1].{kind}" in details and expect in details.lower(), details
    assert service[1].child.exit_code() is None  # the worker process lives on
    good = stub.Generate(media_request("image", "image/png", image_bytes("PNG")), timeout=120)
    assert good.usage.completion_tokens > 0


def test_media_to_a_text_only_model_is_rejected_at_the_gateway(stub):
    req = media_request("image", "image/png", image_bytes("PNG"))
    req.model = "not-served"
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_chat_cli_with_an_image(service, tmp_path, redis_url):
    path = tmp_path / "a.jpg"
    path.write_bytes(image_bytes("JPEG"))
    cmd = [sys.executable, "-m", "bailing.cli", "chat", "--address", service[0], "--model", MODEL]
    done = subprocess.run(
        [*cmd, "--image", str(path), "--max-tokens", "4", "what is this?"], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    missing = subprocess.run(
        [*cmd, "--image", str(tmp_path / "nope.jpg"), "hi"], capture_output=True, timeout=60
    )
    assert missing.returncode != 0 and b"nope.jpg" in missing.stderr


def test_a_batch_job_with_media_items(stub, service):
    """Inline and JSONL (base64 bytes) media items run like interactive requests; a bad one fails alone."""
    import base64
    import json

    from google.protobuf import json_format

    from tests.service.test_batch_e2e import wait_batch

    channel = grpc.insecure_channel(service[0])
    jobs = pb_grpc.JobsStub(channel)
    png, jpeg, wav = image_bytes("PNG"), image_bytes("JPEG"), wav_bytes(tones(), RATE, "PCM_16")
    requests = [
        media_request("image", "image/png", png),
        media_request(None, "", None, "one"),
        media_request("image", "image/png", image_bytes("PNG", photo(1, 1))),
        media_request("audio", "audio/wav", wav),
    ]
    items = [pb.BatchItem(custom_id=f"i{n}", request=r) for n, r in enumerate(requests)]
    batch = jobs.CreateBatch(pb.CreateBatchRequest(model=MODEL, items=items), timeout=60)
    body = json_format.MessageToDict(media_request("image", "image/jpeg", jpeg))
    assert body["messages"][0]["content"][1]["image"]["data"] == base64.b64encode(jpeg).decode()
    line = json.dumps({"custom_id": "j0", "body": body}).encode()
    from_jsonl = jobs.CreateBatch(pb.CreateBatchRequest(model=MODEL, jsonl=line), timeout=60)
    try:
        done = wait_batch(jobs, batch.id, timeout=300)
        assert (done.counts.completed, done.counts.failed) == (3, 1)
        results = list(jobs.GetBatchResults(pb.GetBatchResultsRequest(id=batch.id), timeout=60))
        assert [r.custom_id for r in results] == ["i0", "i1", "i2", "i3"]
        for n in (0, 1, 3):
            interactive = stub.Generate(requests[n], timeout=120)
            assert results[n].response.text == interactive.text
            assert results[n].response.usage.prompt_tokens == interactive.usage.prompt_tokens
        assert (
            results[2].error.code == "INVALID_ARGUMENT" and "image: is 1x1 pixels" in results[2].error.message
        )
        wait_batch(jobs, from_jsonl.id, timeout=300)
        (jsonl_result,) = jobs.GetBatchResults(pb.GetBatchResultsRequest(id=from_jsonl.id), timeout=60)
        jpeg_answer = stub.Generate(media_request("image", "image/jpeg", jpeg), timeout=120)
        assert jsonl_result.response.text == jpeg_answer.text
    finally:
        channel.close()


def test_the_worker_counts_media_parts_and_times_their_processing(stub, service):
    import urllib.request

    for name in ("png", "wav", "mp4"):
        kind, mime, make = MEDIA[name]
        stub.Generate(media_request(kind, mime, make()), timeout=120)
    worker = service[1]
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).read().decode()
    )
    counts = {
        line.split('kind="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bailing_worker_media_parts_total{")
    }
    assert all(counts.get(kind, 0) >= 1 for kind in ("image", "audio", "video")), counts
    encoded = [line for line in text.splitlines() if line.startswith("bailing_worker_media_seconds_count{")]
    assert any('stage="encode"' in line and float(line.rsplit(" ", 1)[1]) > 0 for line in encoded)
