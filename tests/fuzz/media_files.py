"""Well-formed media files for the fuzzer, made in memory (Pillow, PyAV, hand-written WAV headers) and
cached: the bases that tests/fuzz/media.py damages. Nothing here is random: every file is a pure
function of its arguments, so a failing case can be rebuilt from its label.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

import av
import numpy as np
import soundfile
from PIL import Image

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
MIME = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "WAV": "audio/wav",
    "FLAC": "audio/flac",
    "OGG": "audio/ogg",
    "MP3": "audio/mpeg",
    "MP4": "video/mp4",
    "WEBM": "video/webm",
}
# the signature each format's bytes start with (what the gateway sniffs), for "magic + random bytes"
MAGIC = {
    "PNG": b"\x89PNG\r\n\x1a\n",
    "JPEG": b"\xff\xd8\xff",
    "GIF": b"GIF89a",
    "WEBP": b"RIFF\x00\x10\x00\x00WEBP",
    "BMP": b"BM" + bytes(24),
    "WAV": b"RIFF\x00\x10\x00\x00WAVE",
    "FLAC": b"fLaC",
    "OGG": b"OggS",
    "MP3": b"ID3",
    "MP4": b"\x00\x00\x00\x18ftypisom",
    "WEBM": b"\x1a\x45\xdf\xa3",
}
MAGIC_KIND = {
    "PNG": "image",
    "JPEG": "image",
    "GIF": "image",
    "WEBP": "image",
    "BMP": "image",
    "WAV": "audio",
    "FLAC": "audio",
    "OGG": "audio",
    "MP3": "audio",
    "MP4": "video",
    "WEBM": "video",
}


def pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: a gradient with a seed-dependent tint (compresses like a photo)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 3 + seed) % 256, (y * 5) % 256, ((x + y) * 7 + seed * 31) % 256], -1).astype(
        np.uint8
    )


@cache
def image_file(fmt: str, width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
    """A `fmt` picture of width x height in Pillow `mode` (modes a format cannot store become RGB)."""
    img = Image.fromarray(pixels(width, height, seed)).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


@cache
def jpeg_with_orientation(orientation: int, width: int = 48, height: int = 32) -> bytes:
    """A JPEG whose EXIF orientation tag is `orientation` (1..8 are defined; others are nonsense)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels(width, height)).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels, with `idat` (default none) as its data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return MAGIC["PNG"] + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@cache
def png_bomb(side: int) -> bytes:
    """A real side x side grey PNG of zeros: tiny compressed, side² bytes once decoded."""
    row = b"\x00" + bytes(side)  # filter byte + pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return MAGIC["PNG"] + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def wav_file(
    rate: int,
    channels: int,
    frames: int,
    bits: int = 16,
    format_tag: int = 1,
    data_size: int | None = None,
) -> bytes:
    """A WAV written byte by byte, so any header value can be a lie: `rate` Hz, `channels`, `bits`
    per sample, `format_tag` (1 PCM, 3 float, ...), `data_size` (default: the true size). The samples
    are a tone, cut at 1 MiB."""
    block = max(channels, 0) * bits // 8
    size = min(frames * block, 1 << 20)  # a header may claim more; the bytes stay small
    tone = np.sin(np.arange((size + 3) // 2) * 0.05)
    samples = tone.astype("<f4") * 0.3 if (format_tag, bits) == (3, 32) else (tone * 9000).astype("<i2")
    body = samples.tobytes()[:size]
    fmt = struct.pack(
        "<HHIIHH",
        format_tag & 0xFFFF,
        channels & 0xFFFF,
        rate & 0xFFFFFFFF,
        (rate * block) & 0xFFFFFFFF,
        block & 0xFFFF,
        bits & 0xFFFF,
    )
    size = len(body) if data_size is None else data_size & 0xFFFFFFFF
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + body
    return b"RIFF" + struct.pack("<I", (4 + len(chunks)) & 0xFFFFFFFF) + b"WAVE" + chunks


@cache
def soundfile_audio(fmt: str, rate: int, seconds: float) -> bytes:
    """A tone as FLAC / OGG (Vorbis) / WAV through libsndfile."""
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    buf = io.BytesIO()
    subtype = {"FLAC": "PCM_16", "OGG": "VORBIS", "WAV": "PCM_16"}[fmt]
    soundfile.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@cache
def mp3_file(rate: int, seconds: float) -> bytes:
    """A tone as MP3 through PyAV's libmp3lame."""
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


@cache
def video_file(container_format: str, codec: str, frames: int, width: int, height: int, fps: int) -> bytes:
    """`frames` frames of width x height at `fps` (0 frames: a container with an empty stream)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pixels(width, height, i * 40), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


# the small, valid files requests carry when they are not about media damage
def small_png() -> bytes:
    return image_file("PNG", 56, 40)


def small_jpeg() -> bytes:
    return image_file("JPEG", 64, 48)


def small_wav() -> bytes:
    return wav_file(16000, 1, 8000)


def small_mp4() -> bytes:
    return video_file("mp4", "mpeg4", 4, 32, 32, 4)
