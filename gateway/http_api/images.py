"""The image endpoints: `POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (a multipart
upload of the image to edit), over GenerateImage.

OpenAI's fields: `prompt`, `model`, `n`, `size` ("WxH" or "auto": the model's default; snapped to a
size the model runs, reported back as `size`), `output_format` png / jpeg / webp,
`output_compression` (jpeg / webp quality), `response_format` b64_json (the only one: this server
hosts no URLs). Beyond OpenAI's, as the omni servers take them: `seed`, `negative_prompt`, `steps`,
`guidance_scale`, `image_guidance_scale`. Each image of `data` carries the seed it was drawn with.
An edit takes one `image` (`mask` is refused: the model edits by instruction, not by mask).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api import pb
from gateway.http_api.calls import HttpCalls, number_field, text_field, upload, uploads
from gateway.http_api.errors import bad_request
from gateway.http_api.fields import Fields

NUMBERS: dict[str, type] = {
    "n": int,
    "seed": int,
    "steps": int,
    "output_compression": int,
    "guidance_scale": float,
    "image_guidance_scale": float,
}
TEXTS = ("model", "prompt", "size", "response_format", "output_format", "negative_prompt", "quality")
REFUSED = ("style", "background", "moderation", "partial_images", "input_fidelity", "stream")


class ImageRoutes:
    def __init__(self, calls: HttpCalls, servicer: Any) -> None:
        self.calls, self.servicer = calls, servicer

    def routes(self) -> list[Route]:
        return [
            Route("/v1/images/generations", self.generations, methods=["POST"]),
            Route("/v1/images/edits", self.edits, methods=["POST"]),
        ]

    async def generations(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        f = Fields(await self.calls.json(request))
        fields = {k: f.get(k, str) for k in TEXTS} | {k: f.get(k, t) for k, t in NUMBERS.items()}
        fields |= {k: f.obj.get(k) for k in REFUSED}
        req = image_request(fields)
        reply = await self.calls.unary(request, ctx, self.servicer.GenerateImage(req, ctx))
        return JSONResponse(images_reply(reply))

    async def edits(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        form = await self.calls.form(request)
        if await uploads(form, "mask"):
            raise bad_request("mask is not supported: the model edits by the prompt's instruction", "mask")
        image = await upload(form, "image")
        req = image_request(_form_fields(form))
        req.reference_image.CopyFrom(pb.Media(data=image.data, mime_type=image.content_type))
        reply = await self.calls.unary(request, ctx, self.servicer.GenerateImage(req, ctx))
        return JSONResponse(images_reply(reply))


def _form_fields(form: FormData) -> dict[str, Any]:
    fields: dict[str, Any] = {k: text_field(form, k) for k in TEXTS}
    fields |= {k: number_field(form, k, t) for k, t in NUMBERS.items()}
    return fields | {k: text_field(form, k) for k in REFUSED}


def image_request(fields: dict[str, Any]) -> pb.GenerateImageRequest:
    """The GenerateImageRequest of the fields read from a JSON body or a form (None = absent)."""
    for key in REFUSED:
        if fields.get(key) not in (None, False, "", "false"):
            raise bad_request(f"{key} is not supported", key)
    if fields.get("response_format") not in (None, "b64_json"):
        raise bad_request(
            "response_format must be b64_json (this server hosts no image URLs)", "response_format"
        )
    if fields.get("quality") not in (None, "auto"):
        raise bad_request("quality must be auto: set steps and guidance_scale instead", "quality")
    model, prompt = fields.get("model"), fields.get("prompt")
    if not model:
        raise bad_request("model is required", "model")
    if not prompt:
        raise bad_request("prompt is required", "prompt")
    req = pb.GenerateImageRequest(
        model=model,
        prompt=prompt,
        negative_prompt=fields.get("negative_prompt") or "",
        output_format=fields.get("output_format") or "",
        num_images=fields.get("n") or 0,
    )
    req.width, req.height = _size(fields.get("size"))
    for key, field in (("seed", "seed"), ("steps", "steps"), ("output_compression", "quality")):
        if fields.get(key) is not None:
            setattr(req, field, fields[key])
    for key in ("guidance_scale", "image_guidance_scale"):
        if fields.get(key) is not None:
            setattr(req, key, fields[key])
    return req


def _size(size: str | None) -> tuple[int, int]:
    if size in (None, "", "auto"):
        return 0, 0
    width, sep, height = size.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise bad_request(f'size must be "WIDTHxHEIGHT" (e.g. 512x512) or "auto", got {size!r:.40}', "size")
    return int(width), int(height)


def images_reply(resp: pb.GenerateImageResponse) -> dict[str, Any]:
    fmt = resp.images[0].mime_type.removeprefix("image/") if resp.images else "png"
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(i.data).decode(), "seed": i.seed} for i in resp.images],
        "output_format": fmt,
        "size": f"{resp.size.width}x{resp.size.height}",
        "usage": {
            "input_tokens": resp.usage.prompt_tokens,
            "output_tokens": 0,
            "total_tokens": resp.usage.prompt_tokens,
            "steps": resp.usage.steps,
            "images": resp.usage.images,
        },
    }
