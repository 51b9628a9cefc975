"""Speech bytes as files: the WAV header, the mime type of each audio format, and a whole clip from its
chunks (wav: one header + every chunk's PCM; pcm: the PCM; opus: the Ogg pages, whose concatenation is
an Ogg Opus file). Pure and torch-free: the gateway's unary replies, batch speech items (workers) and
the client's file writer use it.

PCM is 16-bit little-endian mono (what AUDIO chunks of "wav" and "pcm" jobs carry).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pipelines.protocol import AUDIO_FORMATS

PCM_SAMPLE_BYTES = 2  # s16le, one channel
WAV_HEADER_BYTES = 44  # the canonical RIFF/WAVE header: "fmt " (PCM) then "data"
MAX_WAV_DATA_BYTES = 0xFFFFFFFF - (WAV_HEADER_BYTES - 8)  # RIFF sizes are 32-bit
MIME_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "opus": "audio/ogg;codecs=opus"}
assert tuple(MIME_TYPES) == AUDIO_FORMATS


def wav_header(sample_rate: int, data_bytes: int) -> bytes:
    """The 44-byte header of a 16-bit mono PCM WAV file whose samples take `data_bytes` bytes."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    if not 0 <= data_bytes <= MAX_WAV_DATA_BYTES:
        raise ValueError(f"data_bytes must be in [0, {MAX_WAV_DATA_BYTES}] (WAV's limit), got {data_bytes}")
    byte_rate = sample_rate * PCM_SAMPLE_BYTES
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        WAV_HEADER_BYTES - 8 + data_bytes,  # the RIFF chunk: everything after this field
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size (plain PCM)
        1,  # format tag: PCM
        1,  # channels
        sample_rate,
        byte_rate,
        PCM_SAMPLE_BYTES,  # block align
        8 * PCM_SAMPLE_BYTES,  # bits per sample
        b"data",
        data_bytes,
    )


def mime_type(fmt: str) -> str:
    """audio/wav, audio/pcm (raw s16le mono) or audio/ogg;codecs=opus."""
    try:
        return MIME_TYPES[fmt]
    except KeyError:
        raise ValueError(f"format must be one of {', '.join(AUDIO_FORMATS)}, got {fmt!r}") from None


def assemble(fmt: str, sample_rate: int, chunks: Iterable[bytes]) -> bytes:
    """The whole clip as one file of `fmt`, from its chunk payloads in index order."""
    body = b"".join(chunks)
    mime_type(fmt)  # an unknown format is an error
    if fmt == "wav":
        return wav_header(sample_rate, len(body)) + body
    return body
