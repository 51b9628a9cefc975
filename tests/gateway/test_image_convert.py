"""GenerateImageRequest -> image job validation, image batch items, and the image reply builder's
pure parts (no server)."""

from __future__ import annotations

import base64
import hashlib
import json

import grpc
import pytest

from gateway.api import pb
from gateway.batch_convert import parse_batch, result_to_pb
from gateway.config import GatewayConfig
from gateway.convert import model_info
from gateway.errors import Rejection
from gateway.image import image_error, image_request_to_job
from gateway.state import ModelState, RequestTrace
from pipelines.batches import ItemResult
from pipelines.protocol import (
    Event,
    EventType,
    GenerateJob,
    ImageOptions,
    WorkerInfo,
    media_key,
)

CFG = GatewayConfig(redis_url="redis://unused", models=("ming", "ling"), max_media_bytes=1024 * 1024)
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 32
WAV = b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 32


def worker(model="ming", modalities=("text", "image"), outputs=("text", "image"), wid="w1") -> WorkerInfo:
    return WorkerInfo(wid, model, "ming", "h", 1, "cpu", 4, 2048, tuple(modalities), tuple(outputs))


MING = ModelState("ming", (worker(),))
TEXT_OUT = ModelState("ling", (worker("ling", outputs=("text",)),))


def request(**kw) -> pb.GenerateImageRequest:
    kw.setdefault("model", "ming")
    kw.setdefault("prompt", "a red fox")
    return pb.GenerateImageRequest(**kw)


def convert(req: pb.GenerateImageRequest, state: ModelState | None = MING, cfg: GatewayConfig = CFG):
    return image_request_to_job(req, cfg, state, submitted_at=1000.0, deadline=1010.0)


def rejection(req: pb.GenerateImageRequest, state: ModelState | None = MING) -> Rejection:
    with pytest.raises(Rejection) as info:
        convert(req, state)
    return info.value


# ---- request -> job ---------------------------------------------------------------------------
def test_every_option_reaches_the_job():
    req = request(
        negative_prompt="blurry", width=768, height=512, steps=28, guidance_scale=3.5,
        image_guidance_scale=1.5, seed=42, num_images=3, output_format="JPEG", quality=85,
        request_id="img-1", priority=2,
    )  # fmt: skip
    job, blobs = convert(req)
    assert (job.task, job.request_id, job.model, job.priority) == ("image", "img-1", "ming", 2)
    assert (job.prompt, job.submitted_at, job.deadline, blobs) == (None, 1000.0, 1010.0, [])
    assert job.image == ImageOptions(
        negative_prompt="blurry", width=768, height=512, steps=28, guidance_scale=3.5,
        image_guidance_scale=1.5, seed=42, num_images=3, output_format="jpeg", quality=85,
    )  # fmt: skip
    (message,) = job.messages
    assert message.role == "user" and [(p.type, p.text) for p in message.parts] == [("text", "a red fox")]
    assert GenerateJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job  # survives Celery's JSON


def test_unset_fields_take_the_model_defaults():
    job, _ = convert(request())
    assert job.image == ImageOptions()  # num_images 0 -> 1, format "" -> png, the rest None / ""
    assert (job.image.num_images, job.image.output_format, job.image.width) == (1, "png", None)
    assert len(job.request_id) == 32
    job, _ = convert(request(seed=0, steps=1, guidance_scale=0.0, output_format="WebP"))
    assert (job.image.seed, job.image.steps, job.image.guidance_scale) == (0, 1, 0.0)
    assert job.image.output_format == "webp" and job.image.quality is None


def test_reference_image_is_stored_and_carried_as_an_image_part():
    job, blobs = convert(request(prompt="make it blue", reference_image=pb.Media(data=JPEG)))
    image, text = job.messages[0].parts
    assert (text.type, text.text, image.type) == ("text", "make it blue", "image")
    assert (image.media.kind, image.media.mime_type, image.media.size) == ("image", "image/jpeg", len(JPEG))
    assert image.media.key == media_key(hashlib.sha256(JPEG).hexdigest())
    assert [(b.key, b.data) for b in blobs] == [(image.media.key, JPEG)]


def test_live_checks_are_skipped_without_workers():
    job, _ = convert(request(model="ling", reference_image=pb.Media(data=PNG)), state=None)
    assert job.task == "image" and job.messages[0].parts[0].type == "image"


def test_a_model_without_image_output_is_rejected():
    err = rejection(request(model="ling"), state=TEXT_OUT)
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.message == "model 'ling' does not generate images (outputs: text)"


def test_reference_image_needs_a_model_that_accepts_images():
    draws_only = ModelState("ming", (worker(modalities=("text",)),))
    assert convert(request(), state=draws_only)[0].task == "image"
    err = rejection(request(reference_image=pb.Media(data=PNG)), state=draws_only)
    assert err.message == "reference_image: model 'ming' does not accept image input (it accepts text)"


def test_unknown_model_is_not_found():
    assert rejection(request(model="sd")).code is grpc.StatusCode.NOT_FOUND


# (id, request kwargs, the message or a fragment of it); every one INVALID_ARGUMENT naming the field
BAD = [
    ("empty-prompt", {"prompt": ""}, "prompt is empty"),
    ("blank-prompt", {"prompt": "  \n"}, "prompt is empty"),
    ("long-prompt", {"prompt": "x" * 4001}, "prompt is 4001 characters, at most 4000 are allowed"),
    ("long-negative", {"negative_prompt": "x" * 4001}, "negative_prompt is 4001 characters"),
    ("width-only", {"width": 512}, "width and height go together"),
    ("height-only", {"height": 512}, "(got width=0, height=512)"),
    ("negative-width", {"width": -512, "height": 512}, "width must be >= 0"),
    ("negative-height", {"width": 512, "height": -1}, "height must be >= 0"),
    ("wide", {"width": 4097, "height": 2048}, "width must be in [1, 4096], got 4097"),
    ("tall", {"width": 1024, "height": 5000}, "height must be in [1, 4096], got 5000"),
    ("pixels", {"width": 2048, "height": 2056}, "width x height must be at most 4194304 pixels"),
    ("ratio-tall", {"width": 256, "height": 1088}, "height / width must be in [1/4, 4]"),
    ("ratio-wide", {"width": 2048, "height": 500}, "got 2048x500 (ratio 0.244)"),
    ("steps-0", {"steps": 0}, "steps must be in [1, 200], got 0"),
    ("steps-201", {"steps": 201}, "steps must be in [1, 200], got 201"),
    ("images-5", {"num_images": 5}, "num_images must be in [1, 4] (0 = 1), got 5"),
    ("images-negative", {"num_images": -1}, "num_images must be in [1, 4]"),
    ("format", {"output_format": "gif"}, "output_format must be one of png, jpeg, webp, got 'gif'"),
    ("quality-png", {"quality": 80}, "quality applies to jpeg and webp only (output_format is png)"),
    ("quality-0", {"output_format": "jpeg", "quality": 0}, "quality must be in [1, 100], got 0"),
    ("quality-101", {"output_format": "webp", "quality": 101}, "quality must be in [1, 100], got 101"),
    ("seed", {"seed": -1}, "seed must be in [0, 9223372036854775807], got -1"),
    ("seed-overflow", {"seed": 2**63 - 1, "num_images": 2}, "seed must be in [0, 9223372036854775806]"),
    ("guidance-negative", {"guidance_scale": -0.5}, "guidance_scale must be in [0, 50], got -0.5"),
    ("guidance-big", {"guidance_scale": 51}, "guidance_scale must be in [0, 50], got 51"),
    ("guidance-nan", {"guidance_scale": float("nan")}, "guidance_scale must be in [0, 50], got nan"),
    ("image-guidance", {"image_guidance_scale": float("inf")}, "image_guidance_scale must be in [0, 50]"),
    (
        "corrupt-reference",
        {"reference_image": pb.Media(data=b"definitely not an image")},
        "reference_image: not a decodable image (bytes match none of PNG, JPEG, GIF, WEBP, BMP)",
    ),
    (
        "audio-reference",
        {"reference_image": pb.Media(data=WAV)},
        "reference_image: not a decodable image (bytes match none of PNG, JPEG, GIF, WEBP, BMP; they look "
        "like WAV audio)",
    ),
    (
        "reference-mime-mismatch",
        {"reference_image": pb.Media(data=PNG, mime_type="image/jpeg")},
        "reference_image: mime_type image/jpeg does not match the bytes (they are PNG, image/png)",
    ),
    (
        "reference-without-bytes",
        {"reference_image": pb.Media(mime_type="image/png")},
        "reference_image.data is empty",
    ),
    ("request-id", {"request_id": "a b"}, "request_id must match"),
    ("model-empty", {"model": ""}, "model is empty"),
]


@pytest.mark.parametrize(("kwargs", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_field_is_invalid_argument_naming_it(kwargs, fragment):
    err = rejection(request(**kwargs))
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.message, err.message


@pytest.mark.parametrize(
    ("width", "height"), [(1, 1), (4096, 1024), (1024, 4096), (2048, 2048), (512, 2048), (333, 777)]
)
def test_sizes_within_the_limits_pass_unsnapped(width, height):
    job, _ = convert(request(width=width, height=height))
    assert (job.image.width, job.image.height) == (width, height)  # the worker snaps them


def test_limits_come_from_the_config():
    cfg = GatewayConfig(
        redis_url="redis://unused", models=("ming",), max_image_side=256, max_image_pixels=256 * 128,
        max_image_steps=10, max_images_per_request=1, max_image_prompt_chars=5,
    )  # fmt: skip
    for kwargs, fragment in [
        ({"width": 257, "height": 128}, "width must be in [1, 256]"),
        ({"width": 256, "height": 256}, "at most 32768 pixels"),
        ({"steps": 11}, "steps must be in [1, 10]"),
        ({"num_images": 2}, "num_images must be in [1, 1]"),
        ({"prompt": "a red fox"}, "prompt is 9 characters, at most 5"),
    ]:
        with pytest.raises(Rejection, match=fragment.replace("[", r"\[")):
            convert(request(**{"prompt": "fox", **kwargs}), cfg=cfg)
    with pytest.raises(ValueError, match="max_image_steps must be >= 1"):
        GatewayConfig(redis_url="redis://unused", models=("ming",), max_image_steps=0)


# ---- live state ---------------------------------------------------------------------------------
def test_outputs_are_what_every_live_worker_produces():
    mixed = ModelState("ming", (worker(), worker(outputs=("text",), wid="w2")))
    assert (MING.outputs, mixed.outputs, ModelState("ming").outputs) == (("text", "image"), ("text",), ())
    assert list(model_info(MING).outputs) == ["text", "image"]
    assert list(model_info(ModelState("ming")).outputs) == []


def test_an_image_is_the_first_output_of_a_trace():
    trace = RequestTrace("r", "ming", "GenerateImage", submitted_at=100.0)
    assert trace.observe(Event(seq=0, type=EventType.STARTED, worker_id="w", time=100.5)) is None
    assert trace.observe(Event(seq=1, type=EventType.PROGRESS, info={"step": 1}, time=101.0)) is None
    assert trace.observe(Event(seq=2, type=EventType.IMAGE, info={}, time=102.0)) is None
    assert trace.observe(Event(seq=3, type=EventType.IMAGE, info={}, time=103.0)) is None
    assert (trace.queue_s, trace.ttft_s, trace.images) == (0.5, 2.0, 2)


def test_terminal_errors_of_image_calls():
    def error(**kw) -> Rejection | None:
        return image_error(Event(seq=9, **kw))

    assert error(type=EventType.DONE) is None
    bad = error(type=EventType.ERROR, error_code="INVALID_ARGUMENT", message="reference image is 1x1")
    assert (bad.code, bad.message) == (grpc.StatusCode.INVALID_ARGUMENT, "reference image is 1x1")
    late = error(type=EventType.CANCELLED, error_code="DEADLINE_EXCEEDED", message="past its deadline")
    assert late.code is grpc.StatusCode.DEADLINE_EXCEEDED
    plain = error(type=EventType.CANCELLED)  # an image reply has no finish_reason to say it
    assert (plain.code, plain.message) == (grpc.StatusCode.CANCELLED, "the request was cancelled")


# ---- batches ------------------------------------------------------------------------------------
def batch(**kw) -> pb.CreateBatchRequest:
    return pb.CreateBatchRequest(model="ming", **kw)


def parse(req: pb.CreateBatchRequest, state: ModelState | None = MING):
    return parse_batch(req, CFG, state, batch_id="b1", submitted_at=5.0)


def test_inline_image_items_become_image_jobs():
    items = [
        pb.BatchItem(custom_id="t", request=pb.GenerateRequest(prompt="hi")),
        pb.BatchItem(custom_id="i", image_request=pb.GenerateImageRequest(prompt="fox", num_images=2)),
        pb.BatchItem(
            custom_id="e",
            image_request=pb.GenerateImageRequest(prompt="blue", reference_image=pb.Media(data=PNG)),
        ),
    ]
    text, image, edit = parse(batch(items=items))
    assert (text.job.task, image.job.task, edit.job.task) == ("generate", "image", "image")
    assert (image.job.request_id, image.job.model, image.job.image.num_images) == ("b1-1", "ming", 2)
    assert image.job.messages[0].parts[0].text == "fox" and image.blobs == ()
    assert [b.data for b in edit.blobs] == [PNG] and edit.job.messages[0].parts[0].type == "image"


def test_jsonl_method_selects_the_request_type():
    lines = [
        {"custom_id": "a", "body": {"prompt": "hi"}},
        {"custom_id": "b", "method": "Generate", "body": {"prompt": "hi"}},
        {
            "custom_id": "c",
            "method": "GenerateImage",
            "body": {
                "prompt": "fox",
                "width": 512,
                "height": 768,
                "outputFormat": "jpeg",
                "referenceImage": {"data": base64.b64encode(PNG).decode()},
            },
        },
    ]
    a, b, c = parse(batch(jsonl="\n".join(json.dumps(x) for x in lines).encode()))
    assert (a.job.task, b.job.task, c.job.task) == ("generate", "generate", "image")
    assert (c.job.image.width, c.job.image.height, c.job.image.output_format) == (512, 768, "jpeg")
    assert [blob.data for blob in c.blobs] == [PNG]


def test_bad_image_items_are_invalid_with_a_clear_message():
    lines = [
        {"custom_id": "a", "method": "Transcribe", "body": {}},
        {"custom_id": "b", "method": "GenerateImage", "body": {"prompt": "fox", "steps": 0}},
        {"custom_id": "c", "method": "GenerateImage", "body": "fox"},
        {"custom_id": "d", "method": "GenerateImage", "body": {"sampling": {}}},
        {"custom_id": "e", "method": ["GenerateImage"], "body": {}},
        {"custom_id": "f", "method": "GenerateImage", "body": {"prompt": "ok"}},
    ]
    req = batch(jsonl="\n".join(json.dumps(x) for x in lines).encode(), skip_invalid_items=True)
    specs = parse(req)
    assert [s.error for s in specs[:3]] == [
        "line 1: unknown method 'Transcribe' (Generate, GenerateImage or SynthesizeSpeech)",
        "line 2: steps must be in [1, 200], got 0",
        "line 3: body must be a JSON object (a GenerateImageRequest)",
    ]
    assert specs[3].error.startswith("line 4: body: ") and "sampling" in specs[3].error
    assert (
        specs[4].error
        == "line 5: unknown method ['GenerateImage'] (Generate, GenerateImage or SynthesizeSpeech)"
    )
    assert specs[5].job.task == "image"
    both = pb.BatchItem(custom_id="x", request=pb.GenerateRequest(prompt="hi"))
    both.image_request.prompt = "fox"
    (spec,) = parse(batch(items=[both], skip_invalid_items=True))
    assert spec.error == "items[0]: request and image_request are both set"


def test_an_image_batch_needs_a_model_that_draws():
    req = batch(items=[pb.BatchItem(custom_id="i", image_request=pb.GenerateImageRequest(prompt="fox"))])
    req.model = "ling"
    with pytest.raises(Rejection) as info:
        parse(req, state=TEXT_OUT)
    assert "items[0]: model 'ling' does not generate images (outputs: text)" in info.value.message


def test_image_results_map_to_image_responses():
    image_response = {
        "requestId": "b1-0",
        "model": "ming",
        "images": [
            {"index": 0, "data": base64.b64encode(b"img0").decode(), "mimeType": "image/png", "seed": 7},
            {"index": 1, "data": base64.b64encode(b"img1").decode(), "mime_type": "image/png", "seed": 8},
        ],
        "size": {"width": 512, "height": 512},
        "usage": {"promptTokens": 12, "steps": 30, "images": 2},
        "not_a_field": True,  # ignored
    }
    out = result_to_pb(ItemResult(0, "i", image_response=image_response))
    assert out.WhichOneof("outcome") == "image_response"
    resp = out.image_response
    assert [(i.index, i.data, i.seed) for i in resp.images] == [(0, b"img0", 7), (1, b"img1", 8)]
    assert (resp.size.width, resp.usage.prompt_tokens, resp.usage.images) == (512, 12, 2)
    broken = result_to_pb(ItemResult(1, "j", image_response={"steps": "many"}))
    assert broken.error.code == "INTERNAL" and "unreadable" in broken.error.message
    text = result_to_pb(ItemResult(2, "k", response={"text": "hi"}))
    assert text.WhichOneof("outcome") == "response" and text.response.text == "hi"


def test_image_limit_flags_reach_the_config():
    import argparse

    from bailing.commands import gateway as command

    parser = argparse.ArgumentParser()
    command.add_parsers(parser.add_subparsers())
    base = ["gateway", "--models", "ming", "--redis-url", "redis://unused"]
    flags = ["--max-image-side", "1024", "--max-image-pixels", "500000", "--max-image-steps", "50"]
    flags += ["--max-images-per-request", "2", "--max-image-prompt-chars", "100"]
    cfg = command._config(parser.parse_args([*base, *flags]))
    limits = (cfg.max_image_side, cfg.max_image_pixels, cfg.max_image_steps)
    assert (*limits, cfg.max_images_per_request, cfg.max_image_prompt_chars) == (1024, 500000, 50, 2, 100)
    default = command._config(parser.parse_args(base))
    assert (default.max_image_side, default.max_image_pixels, default.max_images_per_request) == (
        CFG.max_image_side, 2048 * 2048, 4,
    )  # fmt: skip
    with pytest.raises(ValueError, match="max_images_per_request must be >= 1"):
        command._config(parser.parse_args([*base, "--max-images-per-request", "0"]))
