"""Token counts per image / audio / video equal the spec's formulas and what processing produces;
the log-mel front end equals transformers' WhisperFeatureExtractor; video patches follow Qwen2-VL's layout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ming.processing import (
    ImageConfig,
    MingProcessor,
    VideoConfig,
    audio_frames,
    audio_tokens,
    frame_size,
    grid_tokens,
    image_grid,
    log_mel,
    sample_count,
    sample_indices,
    video_grid,
)
from models.ming.processing.image import VisionPatcher
from models.ming.processing.video import video_patches
from tests.models.ming.processing_media import (
    TINY,
    mp4_bytes,
    png_bytes,
    ramp_video,
    require_golden,
    wav_bytes,
)


@pytest.fixture(scope="module")
def processor() -> MingProcessor:
    require_golden()
    return MingProcessor.from_pretrained(TINY)  # the real checkpoint's pixel bounds (spec defaults)


def _spec_audio_tokens(frames: int) -> int:
    """Spec A.4: L_enc = ⌊(⌊(L−1)/2⌋+1 − 1)/2⌋ + 1."""
    return ((frames - 1) // 2 + 1 - 1) // 2 + 1


# ---- images ---------------------------------------------------------------------------------------
def test_image_grid_spec_examples():
    assert image_grid(56, 56, ImageConfig()) == (1, 20, 20)  # real config: up-sized to 280x280
    assert grid_tokens((1, 20, 20)) == 100
    assert image_grid(56, 56, ImageConfig(min_pixels=56 * 56)) == (1, 4, 4)
    assert image_grid(112, 168, ImageConfig(min_pixels=56 * 56)) == (1, 8, 12)
    # Ming's fetch step caps pictures at 1024·28² pixels before the processor's own 2007040
    _t, h, w = image_grid(3000, 4000, ImageConfig())
    assert h * w * 14 * 14 <= 1024 * 28 * 28 and (h, w) == (54, 72)


@pytest.mark.parametrize(
    ("height", "width"), [(56, 56), (100, 37), (333, 500), (720, 1280), (1200, 900), (20, 600)]
)
def test_image_tokens_match_processing(processor, height, width):
    rng = np.random.default_rng(height * width)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    inputs = processor.process("<IMAGE>", images=[png_bytes(pixels)])
    grid = image_grid(height, width, processor.image_config)
    assert inputs.image_grid_thw.tolist() == [list(grid)]
    assert inputs.pixel_values.shape == (grid[0] * grid[1] * grid[2], 1176)
    n = grid_tokens(grid)
    assert n == grid[0] * grid[1] * grid[2] // 4
    assert inputs.input_ids[0].tolist().count(processor.tokens.image_patch) == n
    assert inputs.num_tokens == n + 3  # <image> ... </image> "\n"


# ---- audio ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds", [0.025, 0.1, 0.99, 1.5, 2.37, 10.0, 31.4])
def test_audio_tokens_match_processing(processor, seconds):
    samples = round(seconds * 16000)
    wave = (0.1 * np.sin(np.arange(samples) * 0.05)).astype(np.float32)
    inputs = processor.process("<AUDIO>", audios=[wav_bytes(wave)])
    frames = audio_frames(samples)
    assert frames == samples // 160
    assert inputs.audio_feats.shape == (1, frames, 128)
    assert inputs.audio_feats_lengths.tolist() == [[frames]]
    assert audio_tokens(frames) == _spec_audio_tokens(frames)
    assert inputs.audio_placeholder_loc_lens.tolist() == [[[1, audio_tokens(frames)]]]


def test_audio_token_examples():
    assert audio_tokens(150) == 38  # golden: 1.5 s -> 150 frames -> 38 tokens
    assert [audio_tokens(n) for n in (1, 2, 3, 4, 5, 100, 3000)] == [
        _spec_audio_tokens(n) for n in (1, 2, 3, 4, 5, 100, 3000)
    ]
    assert audio_tokens(100 * 60) == 1500  # 25 tokens per second


def test_two_audios_pad_and_place(processor):
    a, b = np.zeros(16000, np.float32) + 0.01, np.zeros(4000, np.float32) + 0.02
    inputs = processor.process("x<AUDIO>y<AUDIO>", audios=[wav_bytes(a), wav_bytes(b)])
    assert inputs.audio_feats.shape == (2, 100, 128)
    assert inputs.audio_feats_lengths.tolist() == [[100, 25]]
    assert torch.all(inputs.audio_feats[1, 25:] == 0)
    (first, n1), (second, n2) = inputs.audio_placeholder_loc_lens[0].tolist()
    assert (n1, n2) == (audio_tokens(100), audio_tokens(25))
    ids = inputs.input_ids[0].tolist()
    assert ids[first - 1] == ids[second - 1] == processor.tokens.audio_start
    assert ids[first + n1] == ids[second + n2] == processor.tokens.audio_end


def test_audio_without_placeholder_is_appended(processor):
    inputs = processor.process("hello", audios=[wav_bytes(np.full(1600, 0.1, np.float32))])
    ids = inputs.input_ids[0].tolist()
    assert ids[-1] == processor.tokenizer.convert_tokens_to_ids("\n")
    assert ids[-2] == processor.tokens.audio_end


# ---- Whisper parity -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_mel_matches_whisper_feature_extractor(seed):
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(seed)
    n = int(rng.integers(4000, 60000))
    t = np.arange(n) / 16000
    wave = (0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * rng.uniform(80, 4000) * t)).astype(
        np.float32
    )
    if seed == 2:
        wave *= np.linspace(0, 1, n, dtype=np.float32) ** 3  # a fade-in: exercises the max − 8 floor
    ours = log_mel(torch.from_numpy(wave))
    hf = WhisperFeatureExtractor(feature_size=128)(
        wave, sampling_rate=16000, padding="longest", truncation=False, return_tensors="np"
    )["input_features"][0].T
    assert ours.shape == hf.shape == (n // 160, 128)
    assert np.abs(ours.numpy() - hf).max() < 1e-4


def test_resampled_audio_frames(processor):
    wave = (0.2 * np.sin(np.arange(44100 * 2) * 0.01)).astype(np.float32)
    inputs = processor.process("<AUDIO>", audios=[wav_bytes(wave, rate=44100)])
    assert inputs.audio_feats_lengths.tolist() == [[32000 // 160]]


# ---- video ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("total", "fps", "expected"),
    [
        (30, 10.0, 30),  # 3 s: at most 4 s keeps every frame
        (60, 10.0, 12),  # 6 s at 10 fps: 2 fps
        (9000, 30.0, 128),  # 5 min: capped at 128
        (5, 1.0, 4),  # odd counts floor to even
        (4, 30.0, 4),
        (1000, 2.0, 128),
        (301, 30.0, 20),  # 10.03 s -> int(20.07) = 20
    ],
)
def test_sample_count(total, fps, expected):
    assert sample_count(total, fps) == expected


def test_sample_count_refuses_too_few_frames():
    with pytest.raises(ValueError, match="at least 4"):
        sample_count(3, 30.0)


def test_sample_indices_span_the_video():
    assert sample_indices(4, 10) == [0, 3, 6, 9]
    assert sample_indices(12, 60) == np.linspace(0, 59, 12, dtype=int).tolist()


@pytest.mark.parametrize(
    ("height", "width", "n"), [(48, 64, 30), (720, 1280, 128), (1080, 1920, 16), (360, 640, 4)]
)
def test_frame_size_budget(height, width, n):
    cfg = VideoConfig()
    h, w = frame_size(height, width, n, cfg)
    assert h % 28 == 0 and w % 28 == 0
    assert cfg.min_pixels <= h * w <= max(cfg.total_pixels / n * 2, int(cfg.min_pixels * 1.05))
    # all frames together stay near the ~12k merged-token budget (96·128·28² pixels / 28² per token)
    assert grid_tokens((n // 2, h // 14, w // 14)) <= max(
        96 * 128, n // 2 * int(cfg.min_pixels * 1.05) // 784
    )


@pytest.mark.parametrize(("n", "fps"), [(8, 4), (30, 10), (60, 10)])
def test_video_tokens_match_processing(processor, n, fps):
    inputs = processor.process("<VIDEO>", videos=[mp4_bytes(ramp_video(n), fps)])
    grid = video_grid(48, 64, n, float(fps))
    assert inputs.video_grid_thw.tolist() == [list(grid)]
    assert grid[0] * 2 == sample_count(n, float(fps))
    assert inputs.pixel_values_videos.shape == (grid[0] * grid[1] * grid[2], 1176)
    ids = inputs.input_ids[0].tolist()
    assert ids.count(processor.tokens.video_patch) == grid_tokens(grid)
    assert ids[0] == processor.tokens.video_start and ids[-2] == processor.tokens.video_end
    assert inputs.video_sample_fps == pytest.approx((sample_count(n, float(fps)) / n * fps,))


def test_video_patches_follow_the_qwen2vl_layout():
    """Frames -> our patches equals Qwen2-VL's video patchify written out from the spec layout."""
    cfg = ImageConfig()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
    from PIL import Image

    ours, grid = video_patches([Image.fromarray(f) for f in frames], VisionPatcher(cfg), 2)
    x = frames.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.array(cfg.image_mean, np.float32)) / np.array(cfg.image_std, np.float32)
    x = x.transpose(0, 3, 1, 2)  # (n, C, H, W)
    t, gh, gw, m, p = 2, 4, 6, 2, 14
    ref = x.reshape(t, 2, 3, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    ref = ref.reshape(t * gh * gw, 3 * 2 * p * p)
    assert grid == (2, 4, 6)
    assert np.abs(ours.numpy() - ref).max() < 1e-5
