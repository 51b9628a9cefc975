"""The protobuf boundary of image generation: GenerateImageRequest -> GenerateJob(task="image"), and
an image job's events -> GenerateImageResponse (unary) / GenerateImageEvents (stream).

The job is one user message: (editing) the reference image as an image part, then the prompt text,
validated and stored like Generate's image parts (errors name "reference_image"). Replies: IMAGE
events name the Redis key holding the encoded bytes (`image_key`); `ImageReply` takes them (GET +
DEL) as the events arrive; the DONE event's info is an `ImageSummary`. Error terminals map as
Generate's (`replies.event_error`); a plain cancel, which an image reply cannot express as a
finish_reason, ends the call with CANCELLED.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from gateway.api import pb
from gateway.config import GatewayConfig
from gateway.convert import check_model, check_request_id, media_part
from gateway.errors import Rejection, invalid
from gateway.media import MediaBlob
from gateway.replies import event_error
from gateway.state import ModelState, RequestTrace
from pipelines.protocol import (
    IMAGE_FORMATS,
    ChatMessage,
    Event,
    EventType,
    GenerateJob,
    ImageInfo,
    ImageOptions,
    ImageSummary,
    Part,
    image_key,
)

MAX_ASPECT = 4.0  # height / width within [1/MAX_ASPECT, MAX_ASPECT]: the range of the size tables
MAX_GUIDANCE = 50.0
QUALITY_FORMATS = ("jpeg", "webp")
INT64_MAX = 2**63 - 1

TakeImage = Callable[[str], Awaitable[bytes | None]]  # image key -> its bytes (then gone), None if absent


# ---- GenerateImageRequest -> job ---------------------------------------------------------------
def image_request_to_job(
    req: pb.GenerateImageRequest,
    cfg: GatewayConfig,
    state: ModelState | None,
    *,
    submitted_at: float,
    deadline: float | None = None,
) -> tuple[GenerateJob, list[MediaBlob]]:
    """Validate `req` into an image job plus its reference image's bytes; `state` None skips live checks."""
    check_model(req.model, cfg.models)
    request_id = check_request_id(req.request_id)
    if state is not None and "image" not in state.outputs:
        produces = ", ".join(state.outputs) or "none"
        raise invalid(f"model {req.model!r} does not generate images (outputs: {produces})")
    _check_text("prompt", req.prompt, cfg.max_image_prompt_chars, required=True)
    _check_text("negative_prompt", req.negative_prompt, cfg.max_image_prompt_chars, required=False)
    parts = [Part(type="text", text=req.prompt)]
    blobs: list[MediaBlob] = []
    if req.reference_image.data:  # before the instruction, as in upstream's editing examples
        parts.insert(0, media_part("reference_image", "image", req.reference_image, cfg, state, blobs))
    elif req.reference_image.mime_type:
        raise invalid("reference_image.data is empty: send the bytes of the image to edit (PNG, JPEG, WebP)")
    job = GenerateJob(
        request_id=request_id,
        model=req.model,
        messages=(ChatMessage(role="user", parts=tuple(parts)),),
        task="image",
        image=image_options(req, cfg),
        priority=req.priority,
        deadline=deadline,
        submitted_at=submitted_at,
    )
    return job, blobs


def image_options(req: pb.GenerateImageRequest, cfg: GatewayConfig) -> ImageOptions:
    """The request's image settings, checked against the gateway's limits; unset fields stay None."""
    width, height = _size(req.width, req.height, cfg)
    num_images = req.num_images or 1
    if not 1 <= num_images <= cfg.max_images_per_request:
        limit = cfg.max_images_per_request
        raise invalid(f"num_images must be in [1, {limit}] (0 = 1), got {req.num_images}")
    steps = req.steps if req.HasField("steps") else None
    if steps is not None and not 1 <= steps <= cfg.max_image_steps:
        raise invalid(f"steps must be in [1, {cfg.max_image_steps}], got {steps}")
    output_format, quality = _format(req)
    return ImageOptions(
        negative_prompt=req.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=_guidance(req, "guidance_scale"),
        image_guidance_scale=_guidance(req, "image_guidance_scale"),
        seed=_seed(req, num_images),
        num_images=num_images,
        output_format=output_format,
        quality=quality,
    )


def _check_text(name: str, text: str, limit: int, *, required: bool) -> None:
    if required and not text.strip():
        raise invalid(f"{name} is empty: say what to draw (or, with reference_image, how to edit it)")
    if len(text) > limit:
        raise invalid(f"{name} is {len(text)} characters, at most {limit} are allowed")


def _size(width: int, height: int, cfg: GatewayConfig) -> tuple[int | None, int | None]:
    """(width, height) as asked, or (None, None) for the model's default size (both 0)."""
    for name, value in (("width", width), ("height", height)):
        if value < 0:
            raise invalid(f"{name} must be >= 0 (0 with the other 0 = the model's default), got {value}")
    if width == height == 0:
        return None, None
    if width == 0 or height == 0:
        raise invalid(
            f"width and height go together: set both, or neither for the model's default size "
            f"(got width={width}, height={height})"
        )
    for name, value in (("width", width), ("height", height)):
        if value > cfg.max_image_side:
            raise invalid(f"{name} must be in [1, {cfg.max_image_side}], got {value}")
    if width * height > cfg.max_image_pixels:
        raise invalid(
            f"width x height must be at most {cfg.max_image_pixels} pixels, "
            f"got {width}x{height} = {width * height}"
        )
    if not 1 / MAX_ASPECT <= height / width <= MAX_ASPECT:
        raise invalid(
            f"height / width must be in [1/{MAX_ASPECT:g}, {MAX_ASPECT:g}] (the sizes the model runs), "
            f"got {width}x{height} (ratio {height / width:.3g})"
        )
    return width, height


def _guidance(req: pb.GenerateImageRequest, name: str) -> float | None:
    if not req.HasField(name):
        return None
    value = getattr(req, name)
    if not (math.isfinite(value) and 0 <= value <= MAX_GUIDANCE):
        raise invalid(f"{name} must be in [0, {MAX_GUIDANCE:g}], got {value:g}")
    return value


def _seed(req: pb.GenerateImageRequest, num_images: int) -> int | None:
    if not req.HasField("seed"):
        return None
    top = INT64_MAX - (num_images - 1)  # image i uses seed + i, which must stay an int64
    if not 0 <= req.seed <= top:
        raise invalid(f"seed must be in [0, {top}], got {req.seed}")
    return req.seed


def _format(req: pb.GenerateImageRequest) -> tuple[str, int | None]:
    output_format = req.output_format.strip().lower() or "png"
    if output_format not in IMAGE_FORMATS:
        raise invalid(f"output_format must be one of {', '.join(IMAGE_FORMATS)}, got {req.output_format!r}")
    if not req.HasField("quality"):
        return output_format, None
    if output_format not in QUALITY_FORMATS:
        raise invalid(f"quality applies to jpeg and webp only (output_format is {output_format})")
    if not 1 <= req.quality <= 100:
        raise invalid(f"quality must be in [1, 100], got {req.quality}")
    return output_format, req.quality


# ---- events -> replies -------------------------------------------------------------------------
def image_error(event: Event) -> Rejection | None:
    """The status a terminal event ends an image call with (None: DONE, the images are there)."""
    error = event_error(event)
    if error is None and event.type is EventType.CANCELLED:
        return Rejection(grpc.StatusCode.CANCELLED, event.message or "the request was cancelled")
    return error


def _internal(message: str) -> Rejection:
    return Rejection(grpc.StatusCode.INTERNAL, message)


class ImageReply:
    """One image job's events turned into replies; IMAGE events' bytes are taken with `take`."""

    def __init__(self, job: GenerateJob, take: TakeImage) -> None:
        self.job = job
        self._take = take
        self.images = 0  # images taken so far
        self.summary: ImageSummary | None = None  # the DONE event's, once it came

    async def image(self, event: Event) -> pb.GeneratedImage:
        """The image an IMAGE event announces, with its bytes (removed from Redis)."""
        rid = self.job.request_id
        try:
            info = ImageInfo.from_info(event.info or {})
        except (KeyError, TypeError) as exc:
            raise _internal(f"the worker sent a malformed image event for request {rid} ({exc})") from None
        if info.key != image_key(rid, info.index):  # never read (and delete) a key of anything else
            raise _internal(f"image {info.index} of request {rid} names the wrong key {info.key!r}")
        data = await self._take(info.key)
        if data is None:
            raise _internal(
                f"image {info.index} of request {rid} is missing from Redis "
                f"(key {info.key}: never written, or expired)"
            )
        self.images += 1
        return pb.GeneratedImage(
            index=info.index,
            data=data,
            mime_type=info.mime_type,
            width=info.width,
            height=info.height,
            seed=info.seed,
        )

    def done(self, event: Event, trace: RequestTrace) -> pb.GenerateImageResponse:
        """The response (without images) of a terminal event; raises the Rejection of a failed one."""
        error = image_error(event)
        if error is not None:
            raise error
        try:
            s = ImageSummary.from_info(event.info or {})
        except (KeyError, TypeError) as exc:
            rid = self.job.request_id
            raise _internal(f"the done event of request {rid} has no image summary ({exc})") from None
        self.summary = s
        steps = event.usage.forwards if event.usage and event.usage.forwards else s.steps
        return pb.GenerateImageResponse(
            request_id=self.job.request_id,
            model=self.job.model,
            requested_size=pb.ImageSize(width=s.requested_width, height=s.requested_height),
            size=pb.ImageSize(width=s.width, height=s.height),
            steps=s.steps,
            guidance_scale=s.guidance_scale,
            seed=s.seed,
            usage=pb.ImageUsage(
                prompt_tokens=event.usage.prompt_tokens if event.usage else 0,
                steps=steps,
                images=self.images,
            ),
            timing=pb.Timing(
                queue_s=trace.queue_s, time_to_first_token_s=trace.ttft_s, total_s=trace.total_s
            ),
        )

    async def event(self, event: Event, trace: RequestTrace) -> pb.GenerateImageEvent | None:
        """The stream event `event` becomes (None: nothing to send, e.g. a text delta)."""
        out = pb.GenerateImageEvent(request_id=self.job.request_id)
        if event.type is EventType.STARTED:
            out.started.worker_id = event.worker_id
        elif event.type is EventType.PROGRESS:
            info = event.info or {}
            out.progress.step, out.progress.steps = int(info.get("step", 0)), int(info.get("steps", 0))
        elif event.type is EventType.IMAGE:
            out.image.CopyFrom(await self.image(event))
        elif event.terminal:
            out.done.CopyFrom(self.done(event, trace))
        else:
            return None
        return out


async def collect_images(
    events: AsyncIterator[Event], reply: ImageReply, trace: RequestTrace, max_bytes: int
) -> pb.GenerateImageResponse:
    """The unary GenerateImageResponse: every image in index order, then the summary; one larger
    than `max_bytes` (the gRPC send limit) is RESOURCE_EXHAUSTED, naming the way out."""
    images: dict[int, pb.GeneratedImage] = {}
    response = None
    async for event in events:
        if event.type is EventType.IMAGE:
            image = await reply.image(event)
            images[image.index] = image
        elif event.terminal:
            response = reply.done(event, trace)
    if response is None or reply.summary is None:  # ended without a terminal: being cancelled
        raise Rejection(grpc.StatusCode.CANCELLED, "the request ended before its images were done")
    if sorted(images) != list(range(reply.summary.images)):
        raise _internal(
            f"request {reply.job.request_id}: the worker reported {reply.summary.images} image(s) "
            f"but sent indices {sorted(images)}"
        )
    response.images.extend(images[i] for i in sorted(images))
    if response.ByteSize() > max_bytes:
        raise Rejection(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the images are {response.ByteSize()} bytes together, more than the gateway's "
            f"max_message_bytes ({max_bytes}): use GenerateImageStream (one image per message) "
            "or ask for fewer images",
        )
    return response


async def relay_images(
    events: AsyncIterator[Event], reply: ImageReply, trace: RequestTrace
) -> AsyncIterator[pb.GenerateImageEvent]:
    """The stream: queued (the job is submitted), then one event per worker event, done last."""
    yield pb.GenerateImageEvent(request_id=reply.job.request_id, queued=pb.ImageQueued())
    async for event in events:
        out = await reply.event(event, trace)
        if out is not None:
            yield out
