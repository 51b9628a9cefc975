"""Test helpers for Ming's processor: the golden set's raw inputs, and media files made in memory.

Everything is synthesised here (Pillow, soundfile, PyAV encoders); no media files are checked in.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

GOLDEN = Path(__file__).resolve().parents[3].parent / "shared" / "golden" / "ming-tiny"
TINY = GOLDEN / "tiny-ming"


def require_golden() -> Path:
    if not (GOLDEN / "inputs.safetensors").is_file():
        pytest.skip(f"Ming golden data not found at {GOLDEN}")
    return GOLDEN


@cache
def golden_tensors() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(require_golden() / "inputs.safetensors"))


@cache
def golden_cases() -> dict:
    return json.loads((require_golden() / "expected.json").read_text())["cases"]


# ---- the golden README's raw inputs ---------------------------------------------------------------
def golden_image() -> np.ndarray:
    """The image case: 56x56, pixel[y, x, c] = ((y + x + c)·37 + c·85) % 256."""
    return ((np.indices((56, 56, 3)).sum(0) * 37 + np.arange(3) * 85) % 256).astype(np.uint8)


def golden_windows_image() -> np.ndarray:
    """The image_windows case: 112x168 (H x W), ((y + x + c)·53 + c·41) % 256."""
    return ((np.indices((112, 168, 3)).sum(0) * 53 + np.arange(3) * 41) % 256).astype(np.uint8)


def golden_wave() -> np.ndarray:
    """The audio case: 1.5 s at 16 kHz, 0.3·sin(2π·440t) + 0.2·sin(2π·1234.5t)·e^(−t), in float32 torch
    arithmetic (the golden features match it to 2e-5; float64 arithmetic differs by 4e-2 in a few bins)."""
    t = torch.arange(24000) / 16000
    return (
        0.3 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.sin(2 * math.pi * 1234.5 * t) * torch.exp(-t)
    ).numpy()


# ---- encoders --------------------------------------------------------------------------------------
def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(pixels: np.ndarray, exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if exif_orientation is None:
        img.save(buf, format="JPEG", quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming width x height RGB + an empty IDAT + IEND: a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def wav_bytes(wave: np.ndarray, rate: int = 16000, subtype: str = "FLOAT") -> bytes:
    """(S,) or (S, channels) float samples as a WAV file (FLOAT keeps float32 samples bit-exact)."""
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def flac_bytes(wave: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def mp3_bytes(wave: np.ndarray, rate: int = 16000) -> bytes:
    """Mono float samples encoded with PyAV's libmp3lame; skips the test where FFmpeg lacks it."""
    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this PyAV build has no MP3 encoder (libmp3lame)")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wave[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def mp4_bytes(frames: np.ndarray, fps: int) -> bytes:
    """(n, H, W, 3) uint8 frames as an H.264 (else MPEG-4 part 2) MP4 at `fps`."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def ramp_video(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """n flat frames whose grey level encodes the frame index (i·4): sampled indices can be read back."""
    return np.stack([np.full((height, width, 3), 4 * i, np.uint8) for i in range(n)])


def gradient_jpeg(height: int = 96, width: int = 128) -> bytes:
    """A JPEG of a colour gradient (a real, decodable photo-like image for editing tests)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 2) % 256, (y * 3) % 256, ((x + y) * 5) % 256], axis=-1).astype(np.uint8)
    return jpeg_bytes(pixels)
