"""Hypothesis strategies of media files, good and broken: `media_files()` draws a `MediaFile` (the part
kind it is sent as, its mime type, its bytes, and a label such as "wav: odd header" naming what was
done to it), from the well-formed bases of tests/fuzz/media_files.py and these damages:

  well-formed a valid file (1x1 and sliver-shaped images, 10 ms clips, 1-frame videos included)
  truncated   the first k bytes of a valid file
  corrupted   a valid file with bytes overwritten past its signature
  magic+junk  a format's signature followed by random bytes
  bomb        a PNG / BMP header claiming up to 2^31-1 pixels a side, or a real zlib bomb
  odd header  WAV headers with 0 channels, 1 Hz / 7 Hz / 1 MHz / prime rates, odd bit depths, lying sizes
  empty       zero-length audio and video (no samples, no frames) and zero bytes
  mislabelled valid bytes sent as another kind or under another mime type
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from tests.fuzz import media_files as mf
from tests.fuzz.fields import weighted

DAMAGES = (
    "well-formed",
    "truncated",
    "corrupted",
    "magic+junk",
    "bomb",
    "odd header",
    "empty",
    "mislabelled",
)
KIND_MIME = {"image": "image/png", "audio": "audio/wav", "video": "video/mp4"}


@dataclass(frozen=True)
class MediaFile:
    kind: str  # image / audio / video: the part it is sent as
    mime: str  # the mime type sent ("" = the gateway reads it from the bytes)
    data: bytes
    label: str  # "<format>: <damage>", e.g. "wav: odd header"

    def __repr__(self) -> str:  # failing cases are printed: never dump megabytes
        return (
            f"MediaFile({self.kind}, {self.mime!r}, {len(self.data)} bytes {self.data[:24]!r}, {self.label})"
        )


# ---- valid bases ------------------------------------------------------------------------------------
IMAGE_SIZES = ((1, 1), (13, 13), (14, 14), (28, 28), (56, 40), (96, 64), (3000, 10), (10, 3000), (64, 300))
IMAGE_MODES = ("RGB", "L", "RGBA", "P", "1", "I;16", "CMYK", "LA")


@st.composite
def good_images(draw) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(mf.IMAGE_FORMATS))
    width, height = draw(st.sampled_from(IMAGE_SIZES))
    mode = draw(st.sampled_from(IMAGE_MODES))
    if draw(st.integers(0, 9)) == 0:
        return "JPEG", mf.jpeg_with_orientation(draw(st.sampled_from((1, 3, 5, 6, 8, 0, 9, 255, 65535))))
    return fmt, mf.image_file(fmt, width, height, mode, draw(st.integers(0, 3)))


@st.composite
def good_audio(draw) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(("WAV", "FLAC", "OGG", "MP3")))
    seconds = draw(st.sampled_from((0.01, 0.1, 0.5, 1.0)))
    if fmt == "MP3":
        return fmt, mf.mp3_file(draw(st.sampled_from((16000, 22050, 44100))), seconds)
    rate = draw(st.sampled_from((8000, 16000, 22050, 44100, 48000)))
    if fmt == "WAV" and draw(st.booleans()):
        channels = draw(st.sampled_from((1, 2, 6)))
        bits = draw(st.sampled_from((8, 16, 24, 32)))
        return fmt, mf.wav_file(rate, channels, int(rate * seconds), bits, 3 if bits == 32 else 1)
    return fmt, mf.soundfile_audio(fmt, rate, seconds)


VIDEO_CODECS = (("mp4", "mpeg4"), ("mp4", "libx264"), ("webm", "libvpx"))


@st.composite
def good_videos(draw) -> tuple[str, bytes]:
    container, codec = draw(st.sampled_from(VIDEO_CODECS))
    frames = draw(st.sampled_from((1, 2, 3, 4, 9)))
    width, height = draw(st.sampled_from(((16, 16), (32, 24), (64, 48), (2, 2), (400, 2))))
    fps = draw(st.sampled_from((1, 4, 25, 1000)))
    return container.upper(), mf.video_file(container, codec, frames, width, height, fps)


KIND_BASES = {"image": good_images(), "audio": good_audio(), "video": good_videos()}
FORMAT_KIND = mf.MAGIC_KIND


def _mime(fmt: str) -> str:
    return mf.MIME[fmt]


@st.composite
def _sent_mime(draw, fmt: str) -> str:
    """Mostly the format's own mime type, else none (sniffed) or a parameterised / odd one."""
    return draw(
        st.sampled_from(
            (_mime(fmt), _mime(fmt), _mime(fmt), "", f"{_mime(fmt).upper()}; charset=x", "application/x-nope")
        )
    )


@st.composite
def _good(draw) -> MediaFile:
    kind = draw(st.sampled_from(("image", "audio", "video")))
    fmt, data = draw(KIND_BASES[kind])
    return MediaFile(kind, draw(_sent_mime(fmt)), data, f"{fmt.lower()}: well-formed")


# ---- damage -----------------------------------------------------------------------------------------
@st.composite
def _truncated(draw) -> MediaFile:
    good = draw(_good())
    cut = draw(st.integers(1, max(1, len(good.data) - 1)))
    return MediaFile(good.kind, good.mime, good.data[:cut], good.label.replace("well-formed", "truncated"))


@st.composite
def _corrupted(draw) -> MediaFile:
    good = draw(_good())
    data = bytearray(good.data)
    for _ in range(draw(st.integers(1, 16))):
        at = draw(st.integers(min(12, len(data) - 1), len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return MediaFile(good.kind, good.mime, bytes(data), good.label.replace("well-formed", "corrupted"))


@st.composite
def _magic_junk(draw) -> MediaFile:
    fmt = draw(st.sampled_from(sorted(mf.MAGIC)))
    junk = draw(st.binary(min_size=0, max_size=4096))
    return MediaFile(
        FORMAT_KIND[fmt], draw(_sent_mime(fmt)), mf.MAGIC[fmt] + junk, f"{fmt.lower()}: magic+junk"
    )


SIDES = (0, 1, 50000, 65535, 100000, 2**31 - 1)


def bmp_header_only(width: int, height: int) -> bytes:
    """A BMP whose info header claims width x height 24-bit pixels, with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


@st.composite
def _bomb(draw) -> MediaFile:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return MediaFile("image", "image/png", mf.png_bomb(12000), "png: bomb")
    width, height = draw(st.sampled_from(SIDES)), draw(st.sampled_from(SIDES))
    if choice < 4:
        width, height = min(width, 2**31 - 1), min(height, 2**31 - 1)
        return MediaFile("image", "image/bmp", bmp_header_only(width, height), "bmp: bomb")
    return MediaFile("image", "image/png", mf.png_header_only(width, height), "png: bomb")


ODD_RATES = (1, 7, 8000, 16000, 16001, 44101, 99991, 1_000_000, 0, 2**31 - 1, 2**32 - 1)


@st.composite
def _odd_wav(draw) -> MediaFile:
    rate = draw(st.sampled_from(ODD_RATES))
    channels = draw(st.sampled_from((0, 1, 2, 255, 65535)))
    bits = draw(st.sampled_from((0, 7, 8, 16, 24, 32, 64)))
    tag = draw(st.sampled_from((1, 1, 3, 0, 2, 0x55, 0xFFFE)))
    frames = draw(st.sampled_from((0, 1, 100, 4000)))
    lie = draw(st.sampled_from((None, None, 0, 1, 2**32 - 1)))
    data = mf.wav_file(rate, channels, frames, bits, tag, lie)
    return MediaFile("audio", draw(st.sampled_from(("audio/wav", ""))), data, "wav: odd header")


@st.composite
def _empty(draw) -> MediaFile:
    choice = draw(st.sampled_from(("wav", "mp4", "webm", "bytes")))
    if choice == "wav":
        return MediaFile("audio", "audio/wav", mf.wav_file(16000, 1, 0), "wav: empty")
    if choice == "bytes":
        kind = draw(st.sampled_from(("image", "audio", "video")))
        return MediaFile(kind, KIND_MIME[kind], b"", f"{kind}: empty")
    codec = "mpeg4" if choice == "mp4" else "libvpx"
    return MediaFile(
        "video", f"video/{choice}", mf.video_file(choice, codec, 0, 32, 32, 4), f"{choice}: empty"
    )


@st.composite
def _mislabelled(draw) -> MediaFile:
    good = draw(_good())
    if draw(st.booleans()):
        other = draw(st.sampled_from([k for k in KIND_MIME if k != good.kind]))
        mime = draw(st.sampled_from((KIND_MIME[other], "")))
        return MediaFile(other, mime, good.data, good.label.replace("well-formed", "mislabelled"))
    wrong = draw(st.sampled_from(sorted({_mime(f) for f in FORMAT_KIND if FORMAT_KIND[f] == good.kind})))
    return MediaFile(good.kind, wrong, good.data, good.label.replace("well-formed", "mislabelled"))


DAMAGE_STRATEGIES = {
    "well-formed": _good(),
    "truncated": _truncated(),
    "corrupted": _corrupted(),
    "magic+junk": _magic_junk(),
    "bomb": _bomb(),
    "odd header": _odd_wav(),
    "empty": _empty(),
    "mislabelled": _mislabelled(),
}


def media_files(damages: tuple[str, ...] = DAMAGES) -> st.SearchStrategy[MediaFile]:
    """Any media file with one of `damages` (all by default)."""
    return weighted(dict.fromkeys(damages, 1)).flatmap(DAMAGE_STRATEGIES.__getitem__)


def valid_media(kind: str) -> st.SearchStrategy[MediaFile]:
    """A small valid file of `kind`, cheap for a worker: what most requests that carry media send."""
    make = {"image": mf.small_png, "audio": mf.small_wav, "video": mf.small_mp4}[kind]
    mime = st.sampled_from((KIND_MIME[kind], ""))
    return st.builds(lambda m: MediaFile(kind, m, make(), f"{kind}: small"), mime)
