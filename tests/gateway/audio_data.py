"""Real audio for the speech tests: s16le PCM tones, an Ogg Opus file made by libsndfile (soundfile), and
that file cut at its Ogg page boundaries into chunks, as a worker streams it."""

from __future__ import annotations

import io
import itertools
import struct

import numpy as np
import soundfile as sf

OGG_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, type, granule, serial, sequence, crc, segments


def pcm_tone(seconds: float, rate: int, hz: float = 440.0) -> bytes:
    """A sine tone as 16-bit little-endian mono PCM."""
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 12000).astype("<i2").tobytes()


def pcm_chunks(seconds: float, rate: int, n: int) -> list[bytes]:
    """`pcm_tone` cut into `n` chunks of whole samples."""
    pcm = pcm_tone(seconds, rate)
    samples = len(pcm) // 2
    cuts = [2 * (samples * i // n) for i in range(n + 1)]
    return [pcm[a:b] for a, b in itertools.pairwise(cuts)]


def ogg_opus(seconds: float, rate: int) -> bytes:
    """A real Ogg Opus file of a tone (libsndfile's encoder)."""
    t = np.arange(round(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.4 * np.sin(2 * np.pi * 330 * t)).astype("float32"), rate, format="OGG", subtype="OPUS")
    return buf.getvalue()


def ogg_pages(data: bytes) -> list[bytes]:
    """An Ogg stream's pages, in order (their concatenation is the stream)."""
    pages, at = [], 0
    while at < len(data):
        capture, *_, segments = OGG_HEADER.unpack_from(data, at)
        assert capture == b"OggS", f"no Ogg page at byte {at}"
        table = data[at + OGG_HEADER.size : at + OGG_HEADER.size + segments]
        end = at + OGG_HEADER.size + segments + sum(table)
        pages.append(data[at:end])
        at = end
    return pages


def opus_chunks(seconds: float, rate: int, n: int) -> tuple[bytes, list[bytes]]:
    """(an Ogg Opus file, its pages in `n` chunks; the first also holds the two header pages)."""
    data = ogg_opus(seconds, rate)
    pages = ogg_pages(data)
    head, audio = pages[:2], pages[2:]
    assert len(audio) >= n, f"only {len(audio)} audio pages for {n} chunks"
    cuts = [len(audio) * i // n for i in range(n + 1)]
    chunks = [b"".join(audio[a:b]) for a, b in itertools.pairwise(cuts)]
    chunks[0] = b"".join(head) + chunks[0]
    return data, chunks


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a WAV / Ogg file's bytes (soundfile): (samples, sample rate)."""
    return sf.read(io.BytesIO(data), dtype="int16")
