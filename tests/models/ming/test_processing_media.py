"""Real containers and codecs through the decoders: MP3 (PyAV), FLAC/WAV (soundfile), MP4 frame
sampling, stereo, resampling, EXIF orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ming.processing import (
    AudioConfig,
    ImageConfig,
    VideoConfig,
    decode_audio,
    open_image,
    sample_indices,
)
from models.ming.processing.video import decode_frames, probe
from tests.models.ming.processing_media import (
    flac_bytes,
    jpeg_bytes,
    mp3_bytes,
    mp4_bytes,
    ramp_video,
    wav_bytes,
)


def _tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mp3_decodes_through_pyav():
    wave = _tone(2.0)
    decoded = decode_audio(mp3_bytes(wave), 0, AudioConfig())
    assert decoded.dtype == torch.float32
    # FFmpeg trims the encoder delay (LAME gapless header): within one MP3 frame of the source length
    assert abs(decoded.numel() - wave.size) <= 1152
    n = min(decoded.numel(), wave.size)
    corr = np.corrcoef(decoded.numpy()[:n], wave[:n])[0, 1]
    assert corr > 0.95  # a lossy codec, aligned


def test_flac_and_pcm_wav_decode_to_the_source_samples():
    wave = _tone(1.0)
    for data in (flac_bytes(wave), wav_bytes(wave, subtype="PCM_16")):
        decoded = decode_audio(data, 0, AudioConfig())
        assert decoded.shape == (16000,)
        assert (decoded - torch.from_numpy(wave)).abs().max() < 2 / 32768  # 16-bit quantisation


def test_stereo_takes_the_first_channel():
    left, right = _tone(1.0, freq=300.0), _tone(1.0, freq=3000.0)
    decoded = decode_audio(wav_bytes(np.stack([left, right], axis=1)), 0, AudioConfig())
    assert torch.equal(decoded, torch.from_numpy(left))


def test_resampling_to_16k():
    import torchaudio

    wave = _tone(1.0, rate=22050)
    decoded = decode_audio(wav_bytes(wave, rate=22050), 0, AudioConfig())
    expected = torchaudio.functional.resample(torch.from_numpy(wave), 22050, 16000)
    assert decoded.numel() == 16000
    assert torch.equal(decoded, expected)


@pytest.mark.parametrize("rate", [44101, 99991, 1_000_003])
def test_odd_sample_rates_resample_in_linear_memory(rate):
    """Found by `make fuzz`: a WAV at 99991 Hz made torchaudio build a 16000 x 100k-tap kernel (6 GB)
    and the OOM killer ended the worker; rates whose ratio to 16 kHz does not reduce go through
    libswresample, and give the same wave as torchaudio where both fit (16001 Hz below)."""
    from models.ming.processing.audio import MAX_RESAMPLE_KERNEL, resample_kernel_size

    assert resample_kernel_size(rate, 16000) > MAX_RESAMPLE_KERNEL
    assert resample_kernel_size(44100, 16000) < MAX_RESAMPLE_KERNEL  # common rates keep torchaudio
    wave = _tone(0.5, rate=rate)
    decoded = decode_audio(wav_bytes(wave, rate=rate), 0, AudioConfig())
    assert abs(decoded.numel() - 8000) <= 1
    reference = _tone(0.5)
    corr = np.corrcoef(decoded.numpy()[100:7900], reference[100:7900])[0, 1]
    assert corr > 0.99


def test_swresample_agrees_with_torchaudio_where_both_fit(monkeypatch):
    import torchaudio

    from models.ming.processing import audio

    wave = torch.from_numpy(_tone(1.0, rate=16001))
    expected = torchaudio.functional.resample(wave, 16001, 16000)
    monkeypatch.setattr(audio, "MAX_RESAMPLE_KERNEL", 0)
    got = audio.resample(wave, 16001, 0, AudioConfig())
    assert got.shape == expected.shape
    assert (got[100:-100] - expected[100:-100]).abs().max() < 5e-3


@pytest.mark.parametrize(("n", "fps"), [(8, 4), (30, 10), (60, 10), (50, 2)])
def test_mp4_decodes_the_sampled_frames(n, fps):
    data = mp4_bytes(ramp_video(n), fps)
    info = probe(data, 0, VideoConfig())
    assert (info.total_frames, info.fps, info.height, info.width) == (n, float(fps), 48, 64)
    frames = decode_frames(data, 0, info, VideoConfig())
    wanted = sample_indices(len(frames), n)
    assert len(frames) == {8: 8, 30: 30, 60: 12, 50: 50}[n]
    assert len({f.size for f in frames}) == 1
    levels = [float(np.asarray(f).mean()) / 4 for f in frames]  # frame i was painted with grey 4·i
    assert np.abs(np.array(levels) - np.array(wanted)).max() < 1.0


def test_exif_orientation_is_applied():
    pixels = np.zeros((40, 80, 3), np.uint8)  # wide
    img = open_image(jpeg_bytes(pixels, exif_orientation=6), 0, ImageConfig())  # 6: rotate 90° clockwise
    assert img.size == (40, 80)  # shown tall
    assert open_image(jpeg_bytes(pixels), 0, ImageConfig()).size == (80, 40)
    off = ImageConfig(apply_exif_orientation=False)
    assert open_image(jpeg_bytes(pixels, exif_orientation=6), 0, off).size == (80, 40)


def test_palette_and_alpha_images_become_rgb():
    from io import BytesIO

    from PIL import Image

    for mode in ("P", "RGBA", "L", "I;16"):
        buf = BytesIO()
        Image.new(mode, (30, 20)).save(buf, format="PNG")
        img = open_image(buf.getvalue(), 0, ImageConfig())
        assert img.mode == "RGB" and img.size == (30, 20)
