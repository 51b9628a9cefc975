"""Media parts: recognise images/audio/video by their magic bytes, and park the bytes in Redis.

Flow: convert calls `check_media(kind, data, mime)` -> the canonical mime type (or MediaError) ->
the job carries a `MediaRef` to `media_key(sha256)` -> `store_media` writes the bytes there with
SET NX EX before the task is sent, so a worker never finds a reference without its bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipelines.protocol import media_key


class MediaError(ValueError):
    """A media part is unusable; the message says why, without the field path."""


@dataclass(frozen=True)
class Format:
    kind: str  # image, audio, video
    name: str  # as messages say it: PNG, MP4/MOV
    mime_types: tuple[str, ...]  # the first is canonical
    matches: Callable[[bytes], bool]
    canonical: Callable[[bytes], str] | None = None  # picks the mime type from the bytes

    def mime_for(self, data: bytes) -> str:
        return self.canonical(data) if self.canonical else self.mime_types[0]


def _riff(form: bytes) -> Callable[[bytes], bool]:
    return lambda b: b[:4] == b"RIFF" and b[8:12] == form


def _mp3(b: bytes) -> bool:
    # an ID3 tag, or an MPEG audio frame sync (11 bits set) with a non-reserved layer (not AAC ADTS)
    return b.startswith(b"ID3") or (len(b) >= 2 and b[0] == 0xFF and b[1] & 0xE0 == 0xE0 and b[1] & 0x06 != 0)


FORMATS: tuple[Format, ...] = (
    Format("image", "PNG", ("image/png",), lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
    Format(
        "image", "JPEG", ("image/jpeg", "image/jpg", "image/pjpeg"), lambda b: b.startswith(b"\xff\xd8\xff")
    ),
    Format("image", "GIF", ("image/gif",), lambda b: b.startswith((b"GIF87a", b"GIF89a"))),
    Format("image", "WEBP", ("image/webp",), _riff(b"WEBP")),
    Format(
        "image",
        "BMP",
        ("image/bmp", "image/x-ms-bmp", "image/x-bmp"),
        lambda b: b[:2] == b"BM" and len(b) >= 26,
    ),
    Format("audio", "WAV", ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"), _riff(b"WAVE")),
    Format("audio", "FLAC", ("audio/flac", "audio/x-flac"), lambda b: b.startswith(b"fLaC")),
    Format("audio", "OGG", ("audio/ogg", "audio/opus", "application/ogg"), lambda b: b.startswith(b"OggS")),
    Format("audio", "MP3", ("audio/mpeg", "audio/mp3"), _mp3),
    Format(
        "video",
        "MP4/MOV",
        ("video/mp4", "video/quicktime", "video/x-m4v"),
        lambda b: b[4:8] == b"ftyp",
        lambda b: "video/quicktime" if b[8:12] == b"qt  " else "video/mp4",
    ),
    Format(
        "video",
        "WEBM/MKV",
        ("video/webm", "video/x-matroska"),
        lambda b: b.startswith(b"\x1a\x45\xdf\xa3"),
        lambda b: "video/webm" if b"webm" in b[:64] else "video/x-matroska",
    ),
)
MEDIA_KINDS = ("image", "audio", "video")


def sniff(data: bytes) -> Format | None:
    """The format whose signature `data` starts with, if any."""
    return next((f for f in FORMATS if f.matches(data)), None)


def _normalise_mime(mime_type: str) -> str:
    return mime_type.split(";", 1)[0].strip().lower()


def check_media(kind: str, data: bytes, mime_type: str, max_bytes: int) -> str:
    """Validate one part of `kind`; returns its canonical mime type or raises MediaError."""
    if not data:
        raise MediaError("is empty (no bytes)")
    if len(data) > max_bytes:
        raise MediaError(f"is {len(data)} bytes, more than the limit of {max_bytes} bytes per media part")
    found = sniff(data)
    looks = f"; they look like {found.name} {found.kind}" if found and found.kind != kind else ""
    mime = _normalise_mime(mime_type)
    if not mime:
        if found is None or found.kind != kind:
            names = ", ".join(f.name for f in FORMATS if f.kind == kind)
            raise MediaError(f"not a decodable {kind} (bytes match none of {names}{looks})")
        return found.mime_for(data)
    expected = next((f for f in FORMATS if f.kind == kind and mime in f.mime_types), None)
    if expected is None:
        known = ", ".join(f.mime_types[0] for f in FORMATS if f.kind == kind)
        raise MediaError(f"mime_type {mime_type!r} is not a supported {kind} type (one of {known})")
    if found is not expected:
        if found is not None and found.kind == kind:
            raise MediaError(
                f"mime_type {mime} does not match the bytes (they are {found.name}, {found.mime_for(data)})"
            )
        raise MediaError(
            f"not a decodable {kind} (mime {mime}, "
            f"bytes do not start with a {expected.name} signature{looks})"
        )
    return found.mime_for(data)


@dataclass(frozen=True)
class MediaBlob:
    """Validated bytes on their way to Redis under `key`."""

    key: str
    data: bytes

    @classmethod
    def of(cls, data: bytes) -> MediaBlob:
        return cls(media_key(hashlib.sha256(data).hexdigest()), data)


async def store_media(redis, blobs: Iterable[MediaBlob], ttl_s: int) -> None:
    """Write each blob once (SET NX EX); content already stored only has its TTL renewed."""
    for blob in {b.key: b for b in blobs}.values():
        if await redis.expire(blob.key, ttl_s):
            continue  # same bytes already there (content-addressed): skip re-sending them
        await redis.set(blob.key, blob.data, nx=True, ex=ttl_s)
