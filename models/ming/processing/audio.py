"""Audio: bytes -> first-channel 16 kHz waveform -> Whisper log-mel features (no 30 s padding).

Flow: `decode_audio` (soundfile for WAV/FLAC/OGG, PyAV for MP3/AAC/M4A/... and as a fallback) ->
first channel, float32 in [-1, 1] -> `resample` to 16 kHz (torchaudio; libswresample for rates whose
ratio to 16 kHz does not reduce) -> `log_mel` (T, 128) ->
`process_audios` pads the clips into `audio_feats` (A, T_max, 128) with their frame counts.
`audio_tokens` is the LLM token count of T frames (Whisper conv2 + Ming's Conv1d projector).

Dimension legend: S = samples at 16 kHz, F = n_fft/2 + 1 frequency bins, M = mel bins (128),
T = frames (S // hop, 100 per second), A = audio clips of the request.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import av
import numpy as np
import soundfile
import torch
import torchaudio

from models.ming.processing.errors import MediaError, describe, part_error

_SOUNDFILE_SIGNATURES = (b"RIFF", b"fLaC", b"OggS", b"FORM")  # WAV, FLAC, OGG, AIFF
MAX_RESAMPLE_KERNEL = 1 << 22  # elements (16 MiB of float32): above it, `resample` uses libswresample


@dataclass(frozen=True)
class AudioConfig:
    """Whisper front-end parameters (spec A.4) and the clips refused. Invalid values raise ValueError."""

    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 400
    hop_length: int = 160
    ds_kernel_size: int = 3  # Ming's Conv1d projector after the encoder
    ds_stride: int = 2
    min_seconds: float = 0.025  # one analysis window
    max_seconds: float = 300.0  # n_ctx 15000 encoder positions at 50 Hz

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length", "ds_kernel_size", "ds_stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(
                f"need 0 < min_seconds <= max_seconds, got min_seconds={self.min_seconds}, "
                f"max_seconds={self.max_seconds}"
            )
        if self.min_seconds * self.sample_rate <= self.n_fft // 2:
            raise ValueError(f"min_seconds {self.min_seconds} is shorter than half an analysis window")


def _conv_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


def audio_tokens(frames: int, cfg: AudioConfig = AudioConfig()) -> int:
    """LLM tokens of `frames` mel frames: Whisper conv2 (k3, s2, p1), then the projector Conv1d.

    With the flash config (k3, s2): L_enc = ((L−1)//2 + 1 − 1)//2 + 1, so 150 frames -> 38 tokens.
    """
    encoder = _conv_len(frames, 3, 2, 1)
    return _conv_len(encoder, cfg.ds_kernel_size, cfg.ds_stride, cfg.ds_kernel_size // 2)


def audio_frames(samples: int, cfg: AudioConfig = AudioConfig()) -> int:
    """Mel frames of `samples` samples at cfg.sample_rate: S // hop (the centred STFT's last is dropped)."""
    return samples // cfg.hop_length


# ---- decoding ------------------------------------------------------------------------------------
def decode_audio(data: bytes, index: int, cfg: AudioConfig) -> torch.Tensor:
    """Bytes -> the first channel at cfg.sample_rate, float32 (S,); MediaError names a bad clip."""
    if not data:
        raise part_error("audio", index, "is empty (no bytes)")
    wave, rate = None, 0
    if data[:4] in _SOUNDFILE_SIGNATURES:
        wave, rate = _read_soundfile(data, index, cfg)
    if wave is None:
        wave, rate = _read_pyav(data, index, cfg)
    if not np.isfinite(wave).all():
        raise part_error("audio", index, "holds NaN or infinite samples")
    samples = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if rate != cfg.sample_rate and samples.numel():  # no samples: refused just below, as 0 s long
        samples = resample(samples, rate, index, cfg)
    seconds = samples.numel() / cfg.sample_rate
    if seconds < cfg.min_seconds:
        raise part_error(
            "audio", index, f"is {seconds:.3f} s long; at least {cfg.min_seconds:g} s of sound is needed"
        )
    return samples


def resample_kernel_size(rate: int, target: int) -> int:
    """Elements of torchaudio's polyphase resampling kernel from `rate` to `target` Hz (its defaults:
    lowpass width 6, rolloff 0.99): (target/g) x (rate/g + 2·width), g = gcd(rate, target)."""
    g = math.gcd(rate, target)
    orig, new = rate // g, target // g
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))
    return new * (orig + 2 * width)


def resample(samples: torch.Tensor, rate: int, index: int, cfg: AudioConfig) -> torch.Tensor:
    """(S,) at `rate` Hz -> at cfg.sample_rate.

    torchaudio's windowed-sinc resampler with its defaults, as Ming's processor resamples, whenever its
    kernel is small, which it is for every common rate (44100 -> 16000 reduces to 441:160, 3k taps).
    A rate whose ratio does not reduce (44101 Hz: a 16000 x 44,115 kernel, 2.8 GB; a prime rate near
    100 kHz: more memory than the machine has) goes through libswresample instead, in linear memory.
    """
    if resample_kernel_size(rate, cfg.sample_rate) <= MAX_RESAMPLE_KERNEL:
        return torchaudio.functional.resample(samples, rate, cfg.sample_rate)
    try:
        frame = av.AudioFrame.from_ndarray(samples.numpy()[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        to_rate = av.AudioResampler(format="flt", layout="mono", rate=cfg.sample_rate)
        out = [f.to_ndarray()[0] for f in (*to_rate.resample(frame), *to_rate.resample(None))]
    except (av.FFmpegError, ValueError, OverflowError) as exc:
        raise part_error("audio", index, f"cannot be resampled from {rate} Hz ({describe(exc)})") from None
    return torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0)


def _too_long(index: int, seconds: float, cfg: AudioConfig) -> MediaError:
    return part_error(
        "audio", index, f"is {seconds:.1f} s long, more than the limit of {cfg.max_seconds:g} s"
    )


def _read_soundfile(data: bytes, index: int, cfg: AudioConfig) -> tuple[np.ndarray | None, int]:
    """WAV/FLAC/OGG/AIFF through libsndfile; (None, 0) when it cannot read them (PyAV gets a try)."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            if f.samplerate > 0 and f.frames / f.samplerate > cfg.max_seconds:
                raise _too_long(index, f.frames / f.samplerate, cfg)
            wave = f.read(dtype="float32", always_2d=True)  # (S, channels), ints scaled to [-1, 1)
            return wave[:, 0], int(f.samplerate)
    except MediaError:
        raise
    except (RuntimeError, ValueError, TypeError):  # soundfile's errors derive from RuntimeError
        return None, 0


def _read_pyav(data: bytes, index: int, cfg: AudioConfig) -> tuple[np.ndarray, int]:
    """Any container/codec FFmpeg knows (MP3, AAC/M4A, Opus, WebM, ...), through PyAV."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise part_error("audio", index, "has no audio stream (not an audio file?)")
            return _pyav_samples(container, index, cfg)
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise part_error("audio", index, f"not a decodable audio ({describe(exc)})") from None


def _pyav_samples(container, index: int, cfg: AudioConfig) -> tuple[np.ndarray, int]:
    stream = container.streams.audio[0]
    to_float = av.AudioResampler(format="fltp")  # planar float: one row per channel, rate kept
    chunks, total, rate = [], 0, 0
    for frame in container.decode(stream):
        rate = rate or frame.sample_rate
        for out in to_float.resample(frame):
            chunks.append(out.to_ndarray()[0])  # (S_chunk,) first channel
            total += chunks[-1].shape[0]
        if rate and total / rate > cfg.max_seconds:
            raise _too_long(index, total / rate, cfg)
    for out in to_float.resample(None):  # flush
        chunks.append(out.to_ndarray()[0])
    if not chunks or rate <= 0:
        raise part_error("audio", index, "holds no audio samples")
    return np.concatenate(chunks).astype(np.float32, copy=False), rate


# ---- features ------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _mel_filters(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(M, F) Slaney-normalised Slaney-scale triangles: librosa's filters, as Whisper's are."""
    fb = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
    )  # (F, M)
    return fb.T.contiguous()


def log_mel(wave: torch.Tensor, cfg: AudioConfig = AudioConfig()) -> torch.Tensor:
    """(S,) waveform at 16 kHz -> (T, M) Whisper log-mel, T = S // hop, without the 30 s padding.

    Whisper's recipe (spec A.4): centred STFT (reflect pad, periodic Hann 400, hop 160), power
    spectrum without the last frame, mel projection, log10 floored at 1e-10, then at (max − 8),
    then (x + 4) / 4. Written on torch (torchaudio's mel filters) so it runs on any device; equal to
    transformers' WhisperFeatureExtractor(feature_size=128) without padding within 1e-4.
    """
    window = torch.hann_window(cfg.n_fft, device=wave.device)
    spec = torch.stft(wave.float(), cfg.n_fft, cfg.hop_length, window=window, return_complex=True)  # (F, T+1)
    power = spec[..., :-1].abs() ** 2  # (F, T)
    mel = _mel_filters(cfg.n_fft, cfg.n_mels, cfg.sample_rate).to(wave.device) @ power  # (M, T)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T.contiguous()  # (T, M)


def process_audios(audios: list[bytes], cfg: AudioConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw clips -> (audio_feats (A, T_max, M) zero-padded, frame counts (A,) int64)."""
    feats = [log_mel(decode_audio(data, i, cfg), cfg) for i, data in enumerate(audios)]
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)  # (A,)
    padded = torch.zeros(len(feats), int(lengths.max()), cfg.n_mels)  # (A, T_max, M)
    for i, f in enumerate(feats):
        padded[i, : f.shape[0]] = f
    return padded, lengths


__all__ = ["AudioConfig", "audio_frames", "audio_tokens", "decode_audio", "log_mel", "process_audios"]
