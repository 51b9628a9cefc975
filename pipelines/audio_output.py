"""Per-request audio output: float waveform chunks at the model's rate -> the bytes of each AUDIO chunk.

Flow per chunk: optional tempo change with the pitch kept (FFmpeg's `atempo` filter through a PyAV
filter graph) -> optional resample (torchaudio's windowed-sinc kernel, applied as a stream) -> bytes:
"pcm" and "wav" chunks are raw s16le mono (a whole-clip reply wraps them in one WAV header); "opus"
chunks are Ogg pages (the first carries the headers; the concatenation is an Ogg Opus file). Every
stage is a stream whose output does not depend on where the input was cut (atempo and libopus buffer
internally; the resampler computes an output block once all its input is there; Ogg pages follow the
packets' granule positions, muxed bit-exactly), and a unary reply is the concatenation of the same
chunks, so "streamed == unary" holds by construction. A chunk may come out empty (all held back).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
import torchaudio

from pipelines.protocol import AUDIO_FORMATS

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # what libopus encodes
OPUS_FALLBACK_RATE = 48000  # an Opus reply of a model whose rate libopus does not take
OGG_PAGE_US = 100_000  # an Ogg page per 100 ms of audio at most (the muxer's page_duration)
MIN_SPEED, MAX_SPEED = 0.5, 2.0


@dataclass(frozen=True)
class EncodedChunk:
    data: bytes
    samples: int  # output samples this chunk's input became (at the output rate)


class AudioEncoder:
    """One request's encoder: `encode(samples, last)` per chunk, in order; `last` ends the stream."""

    def __init__(self, in_rate: int, out_rate: int, fmt: str, speed: float = 1.0) -> None:
        if fmt not in AUDIO_FORMATS:
            raise ValueError(f"format must be one of {', '.join(AUDIO_FORMATS)}, got {fmt!r}")
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be in [{MIN_SPEED}, {MAX_SPEED}], got {speed}")
        if fmt == "opus" and out_rate not in OPUS_RATES:
            raise ValueError(f"opus takes sample rates {OPUS_RATES}, got {out_rate}")
        self.in_rate, self.out_rate, self.format = in_rate, out_rate, fmt
        self._tempo = Tempo(in_rate, speed) if speed != 1.0 else None
        self._resample = StreamResampler(in_rate, out_rate) if out_rate != in_rate else None
        self._opus = OggOpusWriter(out_rate) if fmt == "opus" else None
        self._ended = False

    def encode(self, samples: np.ndarray, last: bool = False) -> EncodedChunk:
        """float samples [N] in [-1, 1] at `in_rate` -> this chunk's bytes."""
        if self._ended:
            raise RuntimeError("the audio stream has ended")
        self._ended = last
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._tempo is not None:
            x = self._tempo.push(x, last)
        if self._resample is not None:
            x = self._resample.push(x, last)
        data = self._opus.push(x, last) if self._opus is not None else pcm16(x)
        return EncodedChunk(data, int(x.shape[0]))


def pcm16(x: np.ndarray) -> bytes:
    """float [-1, 1] -> s16le bytes (rounded, clipped)."""
    return np.clip(np.rint(x * 32767.0), -32768, 32767).astype("<i2").tobytes()


def _mono_frame(x: np.ndarray, rate: int, pts: int) -> av.AudioFrame:
    planar = np.ascontiguousarray(x[None], dtype=np.float32)  # (1, N): one channel
    frame = av.AudioFrame.from_ndarray(planar, format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
    return frame


class Tempo:
    """Speed change with the pitch kept: FFmpeg's `atempo` (WSOLA) as a stream."""

    def __init__(self, rate: int, speed: float) -> None:
        self.rate, self._pts = rate, 0
        self._graph = av.filter.Graph()
        src = self._graph.add_abuffer(format="flt", sample_rate=rate, layout="mono", time_base=f"1/{rate}")
        tempo = self._graph.add("atempo", f"{speed:.6f}")
        sink = self._graph.add("abuffersink")
        src.link_to(tempo)
        tempo.link_to(sink)
        self._graph.configure()

    def push(self, x: np.ndarray, last: bool) -> np.ndarray:
        if x.size:
            self._graph.push(_mono_frame(x, self.rate, self._pts))
            self._pts += x.size
        if last:
            self._graph.push(None)
        out = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1))
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class StreamResampler:
    """torchaudio's windowed-sinc resample (`transforms.Resample` defaults) as a stream: output block k
    (new/gcd samples) is computed once its input window [k*o - w, k*o + o + w) is there, so the
    concatenated output equals resampling the whole signal at once (o = orig/gcd, w = kernel width).
    It runs in float64 and returns float32: the convolution's rounding varies with the input length,
    and at float64 that variation vanishes in the cast, so the output is the same for any cuts."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        resampler = torchaudio.transforms.Resample(in_rate, out_rate)
        gcd = math.gcd(in_rate, out_rate)
        self._o, self._n = in_rate // gcd, out_rate // gcd
        self._kernel, self._w = resampler.kernel.double(), int(resampler.width)
        self._buffer = torch.zeros(self._w, dtype=torch.float64)  # the whole signal's left padding
        self._seen = self._emitted = 0

    def push(self, x: np.ndarray, last: bool) -> np.ndarray:
        o, w = self._o, self._w
        self._seen += x.size
        buf = torch.cat([self._buffer, torch.from_numpy(x).double()])
        if last:
            buf = torch.nn.functional.pad(buf, (0, w + o))  # the whole signal's right padding
        span = 2 * w + o  # input samples per output block
        blocks = (buf.numel() - span) // o + 1 if buf.numel() >= span else 0
        if blocks == 0:
            self._buffer = buf
            out = torch.zeros(0, dtype=torch.float64)
        else:
            used = buf[None, None, : (blocks - 1) * o + span]  # (1, 1, samples)
            out = torch.nn.functional.conv1d(used, self._kernel, stride=o)  # (1, n, blocks)
            out = out.transpose(1, 2).reshape(-1)  # (blocks * n,)
            self._buffer = buf[blocks * o :]
        if last:
            target = math.ceil(self._n * self._seen / o)
            out = out[: max(0, target - self._emitted)]
        self._emitted += out.numel()
        return out.numpy().astype(np.float32)


class _Sink(io.RawIOBase):
    """Where the Ogg muxer writes; each chunk takes what was written since the last one."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.data += bytes(b)
        return len(b)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class OggOpusWriter:
    """libopus in an Ogg container, written bit-exactly (fixed stream serial, no timing in the bytes)."""

    def __init__(self, rate: int) -> None:
        self.rate, self._pts = rate, 0
        self._sink = _Sink()
        options = {"page_duration": str(OGG_PAGE_US), "fflags": "+bitexact"}
        self._container = av.open(self._sink, "w", format="ogg", options=options)
        self._stream = self._container.add_stream("libopus", rate=rate, layout="mono")

    def push(self, x: np.ndarray, last: bool) -> bytes:
        packets = []
        if x.size:
            packets += self._stream.encode(_mono_frame(x, self.rate, self._pts))
            self._pts += x.size
        if last:
            packets += self._stream.encode(None)
        for packet in packets:
            self._container.mux(packet)
        if last:
            self._container.close()
        return self._sink.take()
