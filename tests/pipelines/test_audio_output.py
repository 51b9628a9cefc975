"""Audio output encoding: pcm/wav/opus chunks readable by soundfile and PyAV at the stated rate, speed
changes the duration by ~1/speed, resampling changes the rate, the bytes do not depend on where the
stream was cut; and the trailing-silence trimmer."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from pipelines.audio_files import wav_header
from pipelines.audio_output import AudioEncoder, StreamResampler
from pipelines.speech_silence import SilenceTrimmer

RATE = 16000


def signal(seconds: float = 1.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).normal(0, 0.05, t.shape)
    return (0.4 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32)


def encode(x: np.ndarray, fmt: str, cuts: int, out_rate: int = RATE, speed: float = 1.0):
    encoder = AudioEncoder(RATE, out_rate, fmt, speed)
    parts = np.array_split(x, cuts)
    chunks = [encoder.encode(p) for p in parts]
    chunks.append(encoder.encode(np.zeros(0, np.float32), last=True))  # the stream's end, as the worker
    return b"".join(c.data for c in chunks), sum(c.samples for c in chunks), chunks


def read_pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float32) / 32767


@pytest.mark.parametrize("fmt", ["pcm", "wav", "opus"])
@pytest.mark.parametrize(("out_rate", "speed"), [(RATE, 1.0), (24000, 1.0), (RATE, 1.5), (8000, 0.7)])
def test_cuts_do_not_change_the_bytes(fmt, out_rate, speed):
    x = signal()
    whole, n, _ = encode(x, fmt, 1, out_rate, speed)
    for cuts in (3, 17):
        data, m, _ = encode(x, fmt, cuts, out_rate, speed)
        assert data == whole and m == n


def test_pcm_is_s16le_at_the_model_rate():
    x = signal()
    data, n, chunks = encode(x, "pcm", 4)
    assert n == x.size and len(data) == 2 * x.size
    assert np.abs(read_pcm(data) - np.clip(x, -1, 1)).max() < 1 / 32767
    assert [len(c.data) for c in chunks[:-1]] == [2 * len(p) for p in np.array_split(x, 4)]  # no hold-back
    wav = wav_header(RATE, len(data)) + data  # what a whole-clip reply is
    back, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate == RATE and back.shape == (x.size,)


def test_resampling_changes_the_rate_not_the_duration():
    x = signal()
    data, n, _ = encode(x, "pcm", 5, out_rate=24000)
    assert n == x.size * 24000 // RATE
    ref = torchaudio.functional.resample(torch.from_numpy(x), RATE, 24000).numpy()
    assert np.abs(read_pcm(data) - ref).max() < 2e-4  # torchaudio's own resampler, to s16 rounding


def test_stream_resampler_equals_the_whole_resample():
    x = signal(0.7)
    r = StreamResampler(RATE, 22050)
    parts = np.array_split(x, 9)
    out = np.concatenate([r.push(p, i == len(parts) - 1) for i, p in enumerate(parts)])
    ref = torchaudio.functional.resample(torch.from_numpy(x), RATE, 22050).numpy()
    assert out.shape == ref.shape and np.abs(out - ref).max() < 3e-5  # ours runs in float64


@pytest.mark.parametrize("speed", [0.5, 0.8, 1.25, 2.0])
def test_speed_changes_the_duration(speed):
    x = signal(2.0)
    _, n, _ = encode(x, "pcm", 6, speed=speed)
    assert n / x.size == pytest.approx(1 / speed, rel=0.03)


def test_opus_is_an_ogg_file_readable_by_soundfile_and_av():
    x = signal(1.0)
    data, n, chunks = encode(x, "opus", 6, out_rate=24000)
    assert chunks[0].data.startswith(b"OggS") and b"OpusHead" in chunks[0].data
    assert n == 24000
    back, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000 and abs(back.shape[0] - n) <= 1
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        decoded = sum(frame.samples for frame in container.decode(stream))
    assert decoded / 48000 == pytest.approx(1.0, abs=0.03)  # Opus decodes at 48 kHz


def test_encoder_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="format"):
        AudioEncoder(RATE, RATE, "mp3")
    with pytest.raises(ValueError, match="speed"):
        AudioEncoder(RATE, RATE, "pcm", 3.0)
    with pytest.raises(ValueError, match="opus takes"):
        AudioEncoder(RATE, 44100, "opus")
    encoder = AudioEncoder(RATE, RATE, "pcm")
    encoder.encode(signal(0.1), last=True)
    with pytest.raises(RuntimeError, match="ended"):
        encoder.encode(signal(0.1))


# ---- trailing silence -------------------------------------------------------------------------------
def trimmed(x: np.ndarray, cuts: int) -> np.ndarray:
    trimmer = SilenceTrimmer(RATE)
    parts = np.array_split(x, cuts)
    return np.concatenate([trimmer.push(p, i == len(parts) - 1) for i, p in enumerate(parts)])


def test_a_long_silent_tail_is_cut_to_0_3_s():
    speech, silence = signal(1.0), np.zeros(RATE * 2, np.float32)
    out = trimmed(np.concatenate([speech, silence]), 1)
    assert out.size == speech.size + int(0.3 * RATE)
    assert np.array_equal(out[: speech.size], speech)


def test_silence_inside_the_segment_is_kept():
    x = np.concatenate([signal(0.5), np.zeros(RATE, np.float32), signal(0.5)])
    assert np.array_equal(trimmed(x, 1), x)


def test_trimming_does_not_depend_on_the_cuts():
    x = np.concatenate(
        [signal(0.55), np.zeros(RATE, np.float32), signal(0.33), np.full(9000, 1e-4, np.float32)]
    )
    whole = trimmed(x, 1)
    for cuts in (2, 7, 40):
        assert np.array_equal(trimmed(x, cuts), whole)


def test_loud_audio_goes_out_at_once_and_silence_waits():
    trimmer = SilenceTrimmer(RATE)
    assert trimmer.push(signal(0.25)).size == int(0.2 * RATE)  # two whole loud frames; the rest waits
    assert trimmer.push(np.zeros(RATE, np.float32)).size == int(0.1 * RATE)  # the loud part of frame 3
    assert trimmer.push(np.zeros(0, np.float32), last=True).size == int(0.3 * RATE)
