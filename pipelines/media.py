"""Media pipeline (torch side): a multimodal family's job -> prompt token ids + the engine's `MediaInputs`.

Flow: the job's messages (or a transcription's audio) -> processor messages with a placeholder item
per media part, and each part's bytes fetched from Redis (`MediaRef.key`, parked by the gateway) in
part order -> the family's processor (`Family.processor`, e.g. `MingProcessor`: chat format,
decoding, resizing, mel features, placeholder expansion) -> ids + processor tensors. It runs in the
job's task thread: decoding never holds up the engine loop. Every problem a client caused raises
`RequestError` (INVALID_ARGUMENT) naming the request field, e.g. "messages[0].content[1].image: ...".
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import RequestError
from engine.multimodal import MediaInputs
from models.family import Family
from pipelines.protocol import GenerateJob, MediaRef

MEDIA_KINDS = ("image", "audio", "video")
# How the processor names a part: "image 2: ..." (counted from 1 per kind, in request order)
_PART_NAME = re.compile(r"^(image|audio|video) (\d+): ")

FetchMedia = Callable[[MediaRef], bytes | None]  # None: the bytes are gone (TTL passed)


@dataclass(frozen=True)
class MediaPrompt:
    """One job's prompt for a multimodal model: its token ids and media (None: text only)."""

    ids: list[int]
    media: MediaInputs | None


@dataclass(frozen=True)
class MediaLimits:
    """An operator's limits on top of the checkpoint's (None: the processor's default)."""

    max_image_pixels: int | None = None  # decoded pixels of one image (decompression bombs)
    max_audio_seconds: float | None = None  # one clip; never above what the audio encoder can take
    max_video_seconds: float | None = None
    max_video_frames: int | None = None  # frames sampled from one video

    def overrides(self) -> dict[str, dict[str, Any]]:
        """The processor's config overrides per medium (`from_pretrained(image=, audio=, video=)`)."""
        fields = {
            "image": {"max_input_pixels": self.max_image_pixels},
            "audio": {"max_seconds": self.max_audio_seconds},
            "video": {"max_seconds": self.max_video_seconds, "max_frames": self.max_video_frames},
        }
        return {kind: {k: v for k, v in f.items() if v is not None} for kind, f in fields.items()}


class MediaPipeline:
    """The front end of one multimodal checkpoint; thread-safe (one per worker, used by every task)."""

    def __init__(
        self, family: Family, model_dir: str | Path, fetch: FetchMedia, limits: MediaLimits | None = None
    ) -> None:
        if family.processor is None:
            raise ValueError(f"family {family.name!r} has no media processor")
        module, _, name = family.processor.partition(":")
        load = getattr(importlib.import_module(module), name).from_pretrained
        self.family, self.fetch = family, fetch
        self.processor = load(model_dir)
        overrides = (limits or MediaLimits()).overrides()
        audio_cap = self.processor.audio_config.max_seconds  # what the checkpoint's encoder can take
        asked = overrides["audio"].get("max_seconds")
        if asked is not None and asked > audio_cap:
            raise ValueError(
                f"max_audio_seconds {asked:g} exceeds the audio encoder's limit of {audio_cap:g} s"
            )
        if any(overrides.values()):
            self.processor = load(model_dir, **overrides)

    def build(self, job: GenerateJob) -> MediaPrompt:
        """The job as prompt ids + media tensors; RequestError naming the field for a client mistake."""
        thinking = bool(job.enable_thinking)
        if job.task == "transcribe":
            messages, parts = self._transcription(job)
        elif job.messages is not None and job.prompt is None:
            messages, parts = self._messages(job)
        elif job.prompt is not None and job.messages is None:
            if not isinstance(job.prompt, str):
                raise RequestError(f"prompt must be a string, got {type(job.prompt).__name__}")
            messages, parts = job.prompt, {kind: [] for kind in MEDIA_KINDS}
        else:
            raise RequestError("set exactly one of prompt and messages")
        data = {kind: [self._bytes(path, ref) for path, ref in parts[kind]] for kind in MEDIA_KINDS}
        try:
            inputs = self.processor.process(
                messages, images=data["image"], audios=data["audio"], videos=data["video"], thinking=thinking
            )
        except RequestError as exc:
            raise RequestError(_name_part(str(exc), parts)) from None
        tensors = inputs.media()
        ids = inputs.input_ids[0].tolist()
        if not tensors:
            return MediaPrompt(ids, None)
        keys = [ref.key for kind in MEDIA_KINDS for _, ref in parts[kind]]  # content hashes, in order
        return MediaPrompt(ids, MediaInputs(tensors, digest="|".join(keys)))

    # ---- the job's parts ------------------------------------------------------------------------
    def _messages(self, job: GenerateJob) -> tuple[list[dict[str, Any]], dict[str, list]]:
        parts: dict[str, list[tuple[str, MediaRef]]] = {kind: [] for kind in MEDIA_KINDS}
        messages = []
        for i, message in enumerate(job.messages):
            content = []
            for j, part in enumerate(message.parts):
                path = f"messages[{i}].content[{j}]"
                if part.type == "text":
                    if not isinstance(part.text, str):
                        raise RequestError(f"{path}.text must be a string")
                    content.append({"type": "text", "text": part.text})
                elif part.type in MEDIA_KINDS and isinstance(part.media, MediaRef):
                    parts[part.type].append((f"{path}.{part.type}", part.media))
                    content.append({"type": part.type})
                else:
                    raise RequestError(f"{path} is a part of unknown type {part.type!r}")
            messages.append({"role": message.role, "content": content})
        return messages, parts

    def _transcription(self, job: GenerateJob) -> tuple[list[dict[str, Any]], dict[str, list]]:
        """A transcription: one user turn, the family's ASR instruction followed by the audio."""
        instruction = self.family.transcribe_prompt
        if instruction is None:
            raise RequestError(f"model '{job.model}' does not transcribe audio")
        audio = [
            part.media
            for message in job.messages or ()
            for part in message.parts
            if part.type == "audio" and isinstance(part.media, MediaRef)
        ]
        if len(audio) != 1:
            raise RequestError(f"a transcription takes exactly one audio part, got {len(audio)}")
        content = [{"type": "text", "text": instruction}, {"type": "audio"}]
        parts = {"image": [], "audio": [("audio", audio[0])], "video": []}
        return [{"role": "user", "content": content}], parts

    def _bytes(self, path: str, ref: MediaRef) -> bytes:
        data = self.fetch(ref)
        if data is None:
            raise RequestError(f"{path}: the media bytes are no longer stored (they expire); send it again")
        return data


def _name_part(message: str, parts: dict[str, list[tuple[str, MediaRef]]]) -> str:
    """The processor's "image 2: why" -> "messages[1].content[0].image: why" (the request's field)."""
    found = _PART_NAME.match(message)
    if found is None:
        return message
    kind, index = found.group(1), int(found.group(2)) - 1
    if not 0 <= index < len(parts[kind]):
        return message
    return f"{parts[kind][index][0]}: {message[found.end() :]}"
