"""Image-generation pipeline (torch side): a GenerateJob(task="image") -> what the thinker and the DiT need.

Flow: the job's one user message (text = the prompt or the edit instruction, an optional image part =
the reference) -> the family's processor renders the chat and encodes the reference for the thinker
(`MediaPipeline.build`) -> the query blocks of every scale are appended (`append_queries`) and their
learnable rows join the media tensors -> a `ThinkerPass` (ids, media, the last scale's positions)
for the engine's hidden-state prefill; a negative prompt gets its own pass. Settings the client left
unset take the variant's upstream defaults; the size is snapped to a bucket (an edit keeps its
reference's aspect ratio); the reference is resized to that bucket for the VAE (Pillow bilinear,
as upstream's torchvision resize of a PIL image) and scaled to [-1, 1]. With a glyph encoder (`byt5/`),
the text the prompt quotes becomes `glyph_text` (for `ImageGenerator.add_glyph`). Every client
mistake raises RequestError naming the request field.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from engine.errors import RequestError
from engine.multimodal import MediaInputs
from models.ming.generation.generator import ImageGenerator
from models.ming.generation.glyph import extract_glyph_text
from models.ming.generation.queries import append_queries, query_grids
from models.ming.generation.sizes import snap_size
from models.ming.processing import open_image
from pipelines.media import MediaPipeline
from pipelines.protocol import IMAGE_FORMATS, ChatMessage, GenerateJob, ImageOptions, Part

MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 50.0


@dataclass(frozen=True)
class ImageLimits:
    """An operator's limits (worker flags) on top of what the model can do."""

    max_steps: int = 200
    max_images: int = 4


@dataclass(frozen=True)
class ImageSettings:
    """The resolved settings of one image request (what the DONE event reports)."""

    height: int
    width: int
    steps: int
    guidance: float
    image_guidance: float
    seed: int  # image i is drawn with seed + i
    num_images: int
    output_format: str
    quality: int | None
    requested: tuple[int, int]  # (width, height) as asked; (0, 0) = the model's default

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]


@dataclass(frozen=True)
class ThinkerPass:
    """One thinker prefill whose last-scale query states become a condition."""

    ids: list[int]
    media: MediaInputs
    positions: list[int]  # of the last scale's queries, in order


@dataclass(frozen=True)
class ImagePlan:
    positive: ThinkerPass
    negative: ThinkerPass | None  # the negative prompt's pass; None: the variant's zero condition
    reference: torch.Tensor | None  # [3, H, W] in [-1, 1] at the snapped size (editing)
    settings: ImageSettings
    glyph_text: str = ""  # 'Text "<quoted span>". ' for the glyph encoder; "" = no glyph tokens


def plan(job: GenerateJob, media: MediaPipeline, generator: ImageGenerator, limits: ImageLimits) -> ImagePlan:
    """The job resolved and checked; RequestError naming the field for anything a client got wrong."""
    options = job.image
    if job.task != "image" or options is None:
        raise RequestError("not an image-generation job")
    ref_part = _reference_part(job)
    reference = _reference_image(ref_part, media) if ref_part is not None else None
    settings = resolve(options, generator, limits, None if reference is None else reference.size[::-1])
    positive = thinker_pass(media, job, generator)
    negative = None
    if options.negative_prompt:
        if not isinstance(options.negative_prompt, str):
            raise RequestError("negative_prompt must be a string")
        message = ChatMessage("user", (Part("text", text=options.negative_prompt),))
        negative_job = dataclasses.replace(job, messages=(message,))
        negative = thinker_pass(media, negative_job, generator)
    pixels = None if reference is None else reference_pixels(reference, settings.height, settings.width)
    glyph = extract_glyph_text(_user_text(job)) if generator.glyph is not None else ""
    return ImagePlan(positive, negative, pixels, settings, glyph)


def thinker_pass(media: MediaPipeline, job: GenerateJob, generator: ImageGenerator) -> ThinkerPass:
    """The chat prompt (and its reference image) + the query blocks -> one hidden-state prefill."""
    built = media.build(job)
    scales = generator.config.scales
    queries = append_queries(built.ids, scales, generator.thinker.tokens)
    tensors = dict(built.media.tensors) if built.media is not None else {}
    tensors["query_embeds"] = generator.heads.queries().detach()
    tensors["query_grid_thw"] = torch.tensor(query_grids(scales), dtype=torch.long)
    digest = (built.media.content_digest() if built.media is not None else "") + "|queries"
    return ThinkerPass(queries.ids, MediaInputs(tensors, digest=digest), queries.positions)


def _reference_part(job: GenerateJob) -> Part | None:
    """The reference image part (None: text-to-image) of the job's single user message, checked."""
    if job.prompt is not None or not job.messages or len(job.messages) != 1:
        raise RequestError("an image request is one user message: the prompt and at most one image")
    texts = [p.text for p in job.messages[0].parts if p.type == "text"]
    images = [p for p in job.messages[0].parts if p.type == "image"]
    others = [p.type for p in job.messages[0].parts if p.type not in ("text", "image")]
    if others:
        raise RequestError(f"an image request takes text and one reference image, not {others[0]}")
    if len(images) > 1:
        raise RequestError(f"reference_image: one reference image at most, got {len(images)}")
    text = "\n".join(t for t in texts if isinstance(t, str)).strip()
    if not text:
        raise RequestError("prompt is empty: say what to draw (or how to edit the reference image)")
    return images[0] if images else None


def _user_text(job: GenerateJob) -> str:
    """The user turn's text as the chat renders it (text parts joined as they are): upstream extracts
    the glyph text from the whole chat, whose other parts hold no quote, apostrophe or removal word."""
    return "".join(p.text for p in job.messages[0].parts if p.type == "text" and isinstance(p.text, str))


def _reference_image(part: Part, media: MediaPipeline) -> Image.Image:
    data = media.fetch(part.media) if part.media is not None else None
    if data is None:
        raise RequestError("reference_image: the bytes are no longer stored (they expire); send it again")
    try:
        return open_image(data, 0, media.processor.image_config, "image")
    except RequestError as exc:  # "image 1: why" -> the request's field
        raise RequestError(f"reference_image: {str(exc).removeprefix('image 1: ')}") from None


def reference_pixels(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """The reference at the DiT's size, [3, H, W] in [-1, 1] (upstream: bilinear resize, to_tensor)."""
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0  # (H, W, 3)
    return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) * 2.0


# ---- settings --------------------------------------------------------------------------------------
def resolve(
    options: ImageOptions,
    generator: ImageGenerator,
    limits: ImageLimits,
    reference_hw: tuple[int, int] | None = None,
) -> ImageSettings:
    """The client's options over the variant's defaults, checked; the size snapped to a bucket."""
    defaults = generator.config.defaults
    steps = _int(options.steps, "steps", 1, limits.max_steps, defaults.steps)
    num_images = _int(options.num_images, "num_images", 1, limits.max_images, 1)
    guidance = _float(options.guidance_scale, "guidance_scale", defaults.guidance_scale)
    image_guidance = _float(
        options.image_guidance_scale, "image_guidance_scale", defaults.image_guidance_scale
    )
    seed = secrets.randbelow(2**31) if options.seed is None else _int(options.seed, "seed", 0, MAX_SEED, 0)
    if seed + num_images - 1 > MAX_SEED:
        raise RequestError(f"seed + num_images - 1 must be at most {MAX_SEED}")
    fmt = options.output_format.lower() if isinstance(options.output_format, str) else options.output_format
    if fmt not in IMAGE_FORMATS:
        raise RequestError(f"output_format must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
    quality = None if options.quality is None else _int(options.quality, "quality", 1, 100, 0)
    if quality is not None and fmt == "png":
        raise RequestError("quality applies to jpeg and webp, not png")
    height, width = _size(options, defaults.tier, reference_hw)
    requested = (options.width or 0, options.height or 0)
    return ImageSettings(
        height, width, steps, guidance, image_guidance, seed, num_images, fmt, quality, requested
    )


def _size(options: ImageOptions, tier: int, reference_hw: tuple[int, int] | None) -> tuple[int, int]:
    w, h = options.width, options.height
    for name, value in (("width", w), ("height", h)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise RequestError(f"{name} must be an integer, got {value!r}")
    if w == 0 and h == 0:
        w = h = None
    try:
        snapped = snap_size(h, w, tier, reference_hw)
    except ValueError as exc:
        raise RequestError(f"width/height: {exc}") from None
    return snapped.height, snapped.width


def _int(value: object, name: str, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _float(value: object, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    if not 0 <= value <= MAX_GUIDANCE:
        raise RequestError(f"{name} must be in [0, {MAX_GUIDANCE:g}], got {value:g}")
    return float(value)
