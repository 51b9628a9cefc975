"""The diffusion half of an image request, wherever it runs: a `DenoiseJob` -> the image stage ->
decoded, encoded images -> their bytes parked in Redis -> IMAGE events, then DONE.

`finish_images` is called by a thinker worker's task thread (`workers.image_jobs`, local stage) and
by a diffusion-stage worker (`workers.stage_runtime`, remote stage) alike. While the stage steps the
job, the caller's `waiting()` is polled (it checks the deadline); `stopped()` drops the job at the
stage's next step; `complete()` decides, once the images exist, whether they may still be published
(no cancel came first): a request ends exactly once.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engine.passing_thread import in_passing_thread
from models.ming.generation.denoise import DenoiseJob
from models.ming.generation.generator import ImageGenerator
from pipelines.image_generation import ImageSettings
from pipelines.protocol import IMAGE_TTL_S, EventType, ImageInfo, ImageSummary, Usage, image_key
from workers.emitter import Control
from workers.image_stage import ImageStage

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
POLL_S = 0.05  # how often a waiting image request looks at its deadline


@dataclass(frozen=True)
class Outlet:
    """Where one request's results go: Redis (the bytes) and the emitter (the events)."""

    request_id: str
    redis: Any
    emitter: Any  # workers.emitter.Emitter

    def progress(self, step: int, steps: int) -> None:
        self.emitter.put(
            Control(self.request_id, EventType.PROGRESS, {"info": {"step": step, "steps": steps}})
        )


def finish_images(
    generator: ImageGenerator,
    stage: ImageStage,
    job: DenoiseJob,
    settings: ImageSettings,
    outlet: Outlet,
    *,
    stopped: Callable[[], bool],
    complete: Callable[[], bool],
    waiting: Callable[[], None] = lambda: None,
    report: bool = True,
    prompt_tokens: int = 0,
) -> bool:
    """Denoise, decode, encode and publish; True if the images were published."""
    on_step = outlet.progress if report else (lambda step, steps: None)
    ticket = stage.submit(job, on_step, stopped)
    while not ticket.wait(POLL_S):
        waiting()
    if ticket.outcome == "failed":
        raise RuntimeError(f"the denoising loop failed: {ticket.error}")
    if ticket.outcome != "finished":
        return False  # stopped: cancel, deadline or shutdown (whoever stopped it wrote the terminal)
    pixels = in_passing_thread(generator.decode, job)  # (k, H, W, 3) uint8; engine.passing_thread: why
    encoded = [encode_image(p, settings.output_format, settings.quality) for p in pixels]
    if not complete():
        return False
    publish(outlet, settings, encoded, prompt_tokens)
    return True


def publish(outlet: Outlet, s: ImageSettings, encoded: list[bytes], prompt_tokens: int) -> None:
    """Park the bytes in Redis, then queue one IMAGE event per image and the DONE event."""
    rid = outlet.request_id
    pipe = outlet.redis.pipeline(transaction=False)
    for i, data in enumerate(encoded):
        pipe.set(image_key(rid, i), data, ex=IMAGE_TTL_S)
    pipe.execute()
    for i, (data, seed) in enumerate(zip(encoded, s.seeds, strict=True)):
        info = ImageInfo(i, image_key(rid, i), MIME[s.output_format], s.width, s.height, seed, len(data))
        outlet.emitter.put(Control(rid, EventType.IMAGE, {"info": info.to_info()}))
    summary = ImageSummary(
        requested_width=s.requested[0], requested_height=s.requested[1], width=s.width, height=s.height,
        steps=s.steps, guidance_scale=s.guidance, seed=s.seed, images=s.num_images,
    )  # fmt: skip
    usage = Usage(prompt_tokens=prompt_tokens, forwards=s.steps)
    outlet.emitter.put(
        Control(rid, EventType.DONE, {"finish_reason": "stop", "usage": usage, "info": summary.to_info()})
    )


def encode_image(pixels: np.ndarray, fmt: str, quality: int | None = None) -> bytes:
    """uint8 [H, W, 3] -> PNG / JPEG / WebP bytes (deterministic for the same pixels and settings)."""
    out = io.BytesIO()
    options = {} if quality is None else {"quality": quality}
    Image.fromarray(pixels).save(out, format=fmt.upper(), **options)
    return out.getvalue()
