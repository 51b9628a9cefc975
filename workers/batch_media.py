"""A media batch item's result: its IMAGE or AUDIO events' bytes taken out of Redis (and deleted there:
the result holds them now) into the reply message's JSON shape (protobuf field names, bytes base64, as
protobuf JSON writes them), so the gateway turns it into a GenerateImageResponse or a
SynthesizeSpeechResponse as it would an interactive reply."""

from __future__ import annotations

import base64
from typing import Any

from pipelines.audio_files import assemble, mime_type
from pipelines.batches import ItemResult
from pipelines.protocol import (
    AudioChunkInfo,
    ErrorCode,
    Event,
    EventType,
    ImageInfo,
    ImageSummary,
    SpeechSummary,
)


def _taken(client: Any, keys: list[str]) -> list[bytes] | None:
    """The bytes under `keys`, deleted there; None if any expired."""
    datas = [client.get(key) for key in keys]
    if any(d is None for d in datas):
        return None
    if keys:
        client.delete(*keys)
    return datas


def _expired(done: ItemResult, what: str) -> ItemResult:
    error = {"code": ErrorCode.INTERNAL.value, "message": f"the item's {what} expired before it was read"}
    return ItemResult(done.index, done.custom_id, error=error)


def image_result(events: list[Event], done: ItemResult, client: Any) -> ItemResult:
    """An image item's result: a GenerateImageResponse-shaped dict (proto field names, the image bytes
    base64, as protobuf JSON writes bytes) built from its IMAGE events, whose bytes are taken out of
    Redis here (and deleted: the result holds them now)."""
    infos = [ImageInfo.from_info(e.info) for e in events if e.type is EventType.IMAGE]
    summary = ImageSummary.from_info(events[-1].info or {})
    datas = _taken(client, [info.key for info in infos])
    if datas is None:
        return _expired(done, "images")
    images = [
        {"index": i.index, "data": base64.b64encode(d).decode(), "mime_type": i.mime_type,
         "width": i.width, "height": i.height, "seed": str(i.seed)}
        for i, d in zip(infos, datas, strict=True)
    ]  # fmt: skip
    usage = done.response["usage"]
    response = {
        "request_id": done.response["request_id"],
        "model": done.response["model"],
        "images": images,
        "requested_size": {"width": summary.requested_width, "height": summary.requested_height},
        "size": {"width": summary.width, "height": summary.height},
        "steps": summary.steps,
        "guidance_scale": summary.guidance_scale,
        "seed": str(summary.seed),
        "usage": {"prompt_tokens": usage["prompt_tokens"], "steps": summary.steps, "images": len(images)},
    }
    return ItemResult(done.index, done.custom_id, image_response=response)


def speech_result(events: list[Event], done: ItemResult, client: Any) -> ItemResult:
    """A speech item's result: a SynthesizeSpeechResponse-shaped dict, the clip assembled from its AUDIO
    chunks as the unary RPC assembles it (one file of the requested format)."""
    infos = sorted(
        (AudioChunkInfo.from_info(e.info) for e in events if e.type is EventType.AUDIO), key=lambda i: i.index
    )
    summary = SpeechSummary.from_info((events[-1].info or {})["speech"])
    datas = _taken(client, [info.key for info in infos])
    if datas is None:
        return _expired(done, "audio")
    audio = assemble(summary.format, summary.sample_rate, datas)
    response = {
        "request_id": done.response["request_id"],
        "model": done.response["model"],
        "audio": base64.b64encode(audio).decode(),
        "mime_type": mime_type(summary.format),
        "format": summary.format,
        "sample_rate": summary.sample_rate,
        "duration_s": summary.duration_s,
        "seed": str(summary.seed),
        "finish_reason": events[-1].finish_reason or "stop",
        "usage": {
            "prompt_tokens": done.response["usage"]["prompt_tokens"],
            "latent_frames": summary.latent_frames,
            "chunks": summary.chunks,
        },
    }
    return ItemResult(done.index, done.custom_id, speech_response=response)
