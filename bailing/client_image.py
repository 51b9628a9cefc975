"""The client's image generation: `generate_image` / `generate_image_stream` (mixed into `Client` and
`AsyncClient`), their data and its bailing.v1 conversion.

Flow: prompt + options (a reference image as bytes or a path, for editing) -> `build_image_request`
-> `GenerateImageRequest`; `GenerateImageResponse` -> `ImageResult` (images in index order, bytes
included); a stream's `GenerateImageEvent`s -> `ImageQueued`, `ImageStarted`, `ImageProgress`
(step i of N), `ImageGenerated` (one per image), then `ImageDone` (the summary, without images).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

from bailing.client_convert import BailingClientError, Timing, invalid_argument, media_part
from bailing.client_streams import AsyncChunkStream, ChunkStream
from gateway.api import pb


# ---- data -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSize:
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class ImageUsage:
    prompt_tokens: int = 0  # language-model tokens of the prompt
    steps: int = 0  # denoising steps run
    images: int = 0


@dataclass(frozen=True)
class GeneratedImageData:
    """One generated image: its encoded bytes (`mime_type`) and the seed it was drawn with."""

    index: int  # 0..num_images-1
    data: bytes
    mime_type: str
    width: int
    height: int
    seed: int

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bytes to `path`; returns it."""
        out = Path(path)
        out.write_bytes(self.data)
        return out


@dataclass(frozen=True)
class ImageResult:
    """A finished image request. `size` is what the model ran (the request's size snapped to one it
    supports); `requested_size` is 0 x 0 when the model's default was asked for."""

    request_id: str
    model: str
    images: tuple[GeneratedImageData, ...]  # in index order (empty in a stream's ImageDone)
    requested_size: ImageSize
    size: ImageSize
    steps: int
    guidance_scale: float
    seed: int  # image 0's; image i was drawn with seed + i
    usage: ImageUsage
    timing: Timing  # time_to_first_token_s: gateway accept -> first image


@dataclass(frozen=True)
class ImageQueued:
    """The gateway accepted the request and queued it (always the first event)."""

    request_id: str


@dataclass(frozen=True)
class ImageStarted:
    request_id: str
    worker_id: str


@dataclass(frozen=True)
class ImageProgress:
    request_id: str
    step: int  # denoising steps done, 1..steps
    steps: int


@dataclass(frozen=True)
class ImageGenerated:
    request_id: str
    image: GeneratedImageData


@dataclass(frozen=True)
class ImageDone:
    """The last event: the summary (its `images` is empty: they came as `ImageGenerated`)."""

    request_id: str
    result: ImageResult


ImageEvent = ImageQueued | ImageStarted | ImageProgress | ImageGenerated | ImageDone


class ImageRequestOptions(TypedDict, total=False):
    """Keyword options of `generate_image` / `generate_image_stream` (see `build_image_request`)."""

    negative_prompt: str | None
    width: int | None
    height: int | None
    steps: int | None
    guidance_scale: float | None
    image_guidance_scale: float | None
    seed: int | None
    num_images: int
    reference_image: bytes | str | os.PathLike | None
    output_format: str
    quality: int | None
    request_id: str | None
    priority: int


# ---- request ----------------------------------------------------------------------------------
def build_image_request(
    model: str,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    image_guidance_scale: float | None = None,
    seed: int | None = None,
    num_images: int = 1,
    reference_image: bytes | str | os.PathLike | None = None,
    output_format: str = "png",
    quality: int | None = None,
    request_id: str | None = None,
    priority: int = 0,
) -> Any:
    """A `GenerateImageRequest`. Unset options take the model's defaults; width and height go
    together. `reference_image` (the image to edit: its bytes or a file path) makes it an edit."""
    if not isinstance(model, str) or not model:
        raise invalid_argument("model", "a model name is required")
    if not isinstance(prompt, str):
        raise invalid_argument("prompt", f"a string is required, got {type(prompt).__name__}")
    request = pb.GenerateImageRequest(
        model=model,
        prompt=prompt,
        negative_prompt=negative_prompt or "",
        width=width or 0,
        height=height or 0,
        num_images=num_images,
        output_format=output_format or "",
        request_id=request_id or "",
        priority=priority,
    )
    optional = {
        "steps": steps,
        "guidance_scale": guidance_scale,
        "image_guidance_scale": image_guidance_scale,
        "seed": seed,
        "quality": quality,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(request, name, value)
    if reference_image is not None:
        request.reference_image.CopyFrom(_reference(reference_image))
    return request


def _reference(image: bytes | str | os.PathLike) -> Any:
    if isinstance(image, bytes | bytearray | memoryview):
        source: dict[str, Any] = {"data": bytes(image)}
    elif isinstance(image, str | os.PathLike):
        source = {"path": image}
    else:
        raise invalid_argument(
            "reference_image", f"bytes or a file path is required, got {type(image).__name__}"
        )
    return media_part("image", source, "reference_image").image


# ---- replies ----------------------------------------------------------------------------------
def _image_from_pb(msg: Any) -> GeneratedImageData:
    return GeneratedImageData(msg.index, msg.data, msg.mime_type, msg.width, msg.height, msg.seed)


def image_result_from_pb(msg: Any) -> ImageResult:
    u, t = msg.usage, msg.timing
    return ImageResult(
        request_id=msg.request_id,
        model=msg.model,
        images=tuple(_image_from_pb(i) for i in msg.images),
        requested_size=ImageSize(msg.requested_size.width, msg.requested_size.height),
        size=ImageSize(msg.size.width, msg.size.height),
        steps=msg.steps,
        guidance_scale=msg.guidance_scale,
        seed=msg.seed,
        usage=ImageUsage(u.prompt_tokens, u.steps, u.images),
        timing=Timing(t.queue_s, t.time_to_first_token_s, t.total_s),
    )


def image_result_to_pb(result: ImageResult) -> Any:
    """The `GenerateImageResponse` an `ImageResult` came from (for writing results as JSON)."""
    u, t = result.usage, result.timing
    return pb.GenerateImageResponse(
        request_id=result.request_id,
        model=result.model,
        images=[
            pb.GeneratedImage(
                index=i.index, data=i.data, mime_type=i.mime_type, width=i.width, height=i.height, seed=i.seed
            )
            for i in result.images
        ],
        requested_size=pb.ImageSize(width=result.requested_size.width, height=result.requested_size.height),
        size=pb.ImageSize(width=result.size.width, height=result.size.height),
        steps=result.steps,
        guidance_scale=result.guidance_scale,
        seed=result.seed,
        usage=pb.ImageUsage(prompt_tokens=u.prompt_tokens, steps=u.steps, images=u.images),
        timing=pb.Timing(queue_s=t.queue_s, time_to_first_token_s=t.time_to_first_token_s, total_s=t.total_s),
    )


def image_event_from_pb(msg: Any) -> ImageEvent:
    rid, kind = msg.request_id, msg.WhichOneof("event")
    if kind == "queued":
        return ImageQueued(rid)
    if kind == "started":
        return ImageStarted(rid, msg.started.worker_id)
    if kind == "progress":
        return ImageProgress(rid, msg.progress.step, msg.progress.steps)
    if kind == "image":
        return ImageGenerated(rid, _image_from_pb(msg.image))
    if kind == "done":
        return ImageDone(rid, image_result_from_pb(msg.done))
    raise BailingClientError("UNKNOWN", f"request {rid}: an image event of unknown kind (a newer gateway?)")


# ---- the calls (mixed into Client / AsyncClient, which provide the stub and `_unary`) ------------
class ImageCalls:
    _stub: Any
    _metadata: Any
    _unary: Callable[..., Any]
    _timeout: Callable[[float | None], float | None]

    def generate_image(
        self, model: str, prompt: str, *, timeout: float | None = None, **options: Unpack[ImageRequestOptions]
    ) -> ImageResult:
        """Draw `num_images` images for `prompt` (or edit `reference_image`); `timeout` is the RPC
        deadline in seconds."""
        request = build_image_request(model, prompt, **options)
        return image_result_from_pb(self._unary(self._stub.GenerateImage, request, timeout))

    def generate_image_stream(
        self, model: str, prompt: str, *, timeout: float | None = None, **options: Unpack[ImageRequestOptions]
    ) -> ChunkStream:
        """The same request as `ImageEvent`s, ending with `ImageDone`; close the stream to cancel."""
        request = build_image_request(model, prompt, **options)
        deadline = self._timeout(timeout)
        call = self._stub.GenerateImageStream(request, timeout=deadline, metadata=self._metadata)
        return ChunkStream(call, image_event_from_pb)


class AsyncImageCalls:
    _stub: Any
    _metadata: Any
    _unary: Callable[..., Any]
    _timeout: Callable[[float | None], float | None]

    async def generate_image(
        self, model: str, prompt: str, *, timeout: float | None = None, **options: Unpack[ImageRequestOptions]
    ) -> ImageResult:
        request = build_image_request(model, prompt, **options)
        return image_result_from_pb(await self._unary(self._stub.GenerateImage, request, timeout))

    def generate_image_stream(
        self, model: str, prompt: str, *, timeout: float | None = None, **options: Unpack[ImageRequestOptions]
    ) -> AsyncChunkStream:
        request = build_image_request(model, prompt, **options)
        deadline = self._timeout(timeout)
        call = self._stub.GenerateImageStream(request, timeout=deadline, metadata=self._metadata)
        return AsyncChunkStream(call, image_event_from_pb)
