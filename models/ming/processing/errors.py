"""The one error type of Ming's media front end: a part a client sent is unusable.

`MediaError` is a `RequestError` (so a `ValueError` and a `BailingError`): workers already map it to
INVALID_ARGUMENT. Its message names the part, counted from 1 in request order ("image 2: ...").
"""

from __future__ import annotations

from engine.errors import RequestError


class MediaError(RequestError):
    """An image, audio clip, video or prompt placeholder the processor cannot use; says which and why."""


def part_error(kind: str, index: int, message: str) -> MediaError:
    """A MediaError about the `index`-th (0-based) part of `kind`, worded "kind <index+1>: message"."""
    return MediaError(f"{kind} {index + 1}: {message}")


def describe(exc: BaseException) -> str:
    """A decoder's exception in a line: FFmpeg's own text without errno noise, else type: message."""
    strerror = getattr(exc, "strerror", None)
    if type(exc).__module__.startswith("av") and strerror:
        return f"FFmpeg: {strerror}"
    return f"{type(exc).__name__}: {exc}"
