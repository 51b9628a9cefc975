"""Videos: bytes -> PyAV decode -> sampled frames -> Qwen2-VL video patches (temporal patch 2).

Flow: `probe` (first pass: demux only, counts frames and checks the limits before any decoding) ->
`sample_plan` (Preview: `sample_count` / `sample_indices`, <= 2 fps once longer than 4 s, 4..128
frames, even count; spec A.10. 2.0 (`fetch="ming2"`): <= 2 fps always, 1..170 frames, an odd count
padded with the last frame; each frame's time in seconds) -> `decode_frames` (second pass: decodes,
keeps the sampled frames, resizes each to the `frame_size` pixel budget) -> `video_patches` (frame
pairs -> one temporal patch each, timed by the mean of its first and last frame's times).

Dimension legend: n = sampled frames, T' = n / temporal_patch, (h, w) = patches per frame side,
P = 3·temporal_patch·patch² (1176; 2.0: 1536). `pixel_values_videos` is (T'·h·w, P), `video_grid_thw`
(v, 3), or with 2.0's timed frames one (1, h, w) row per temporal patch.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import av
import numpy as np
import torch
from PIL import Image

from models.ming.processing.errors import MediaError, describe, part_error
from models.ming.processing.image import VisionPatcher, smart_resize

_SUBSAMPLE_AFTER_S = 4.0  # shorter videos keep every frame (up to max_frames), as Ming does
FETCH_RULES = ("preview", "ming2")  # whose fetch_video: the Preview's, or 2.0's bailingmm_utils_video


@dataclass(frozen=True)
class VideoConfig:
    """Frame sampling, the per-frame pixel budget (spec A.10) and the limits. Invalid -> ValueError."""

    max_fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 128
    frame_factor: int = 2  # the ViT's temporal patch: frame counts are multiples of it
    factor: int = 28  # patch 14 x merge 2
    patch_size: int = 14
    min_pixels: int = 128 * 28 * 28  # per frame
    total_pixels: int = 96 * 128 * 28 * 28  # over all frames (about 12k merged tokens)
    # Refusals, checked before decoding (bytes, container metadata, a demux-only frame count).
    max_bytes: int = 256 * 1024 * 1024
    max_seconds: float = 600.0
    max_source_frames: int = 36_000
    max_frame_pixels: int = 8192 * 4320
    # 2.0: "ming2" sampling and resize rule; per-frame `<t seconds>` blocks in the prompt.
    fetch: str = "preview"
    interleaved_timestamps: bool = False

    def __post_init__(self) -> None:
        if self.fetch not in FETCH_RULES:
            raise ValueError(f"fetch must be one of {FETCH_RULES}, got {self.fetch!r}")
        ints = ("min_frames", "max_frames", "frame_factor", "factor", "patch_size", "min_pixels")
        for name in (*ints, "total_pixels", "max_bytes", "max_source_frames", "max_frame_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_frames < self.min_frames:
            raise ValueError(f"max_frames ({self.max_frames}) must be >= min_frames ({self.min_frames})")
        if self.max_fps <= 0 or self.max_seconds <= 0:
            raise ValueError(f"max_fps and max_seconds must be > 0, got {self.max_fps}, {self.max_seconds}")
        if self.factor % self.patch_size:
            raise ValueError(f"factor ({self.factor}) must be a multiple of patch_size ({self.patch_size})")


def _floor_to(x: float, k: int) -> int:
    return int(math.floor(x / k) * k)


def _ceil_to(x: float, k: int) -> int:
    return int(math.ceil(x / k) * k)


def sample_count(total_frames: int, fps: float, cfg: VideoConfig = VideoConfig()) -> int:
    """Frames to sample from `total_frames` at `fps`; ValueError when the video has too few.

    Longer than 4 s at more than max_fps: duration·max_fps frames; otherwise all of them. Then
    clamped to [min_frames, max_frames] and floored to a multiple of frame_factor.
    """
    target = total_frames
    if fps > cfg.max_fps and total_frames / fps > _SUBSAMPLE_AFTER_S:
        target = int(total_frames / fps * cfg.max_fps)
    low = _ceil_to(cfg.min_frames, cfg.frame_factor)
    high = _floor_to(min(cfg.max_frames, target), cfg.frame_factor)
    n = _floor_to(max(min(target, high), low), cfg.frame_factor)
    if not cfg.frame_factor <= n <= total_frames:
        raise ValueError(f"has {total_frames} frames; at least {low} are needed")
    return n


def sample_indices(n: int, total_frames: int) -> list[int]:
    """`n` evenly spaced frame indices from first to last ("sequence" sampling)."""
    return np.linspace(0, total_frames - 1, n, dtype=int).tolist()


@dataclass(frozen=True)
class SamplePlan:
    """Which source frames a video keeps and when each was shot."""

    indices: list[int]  # source frames to decode, in order; 2.0 repeats the last to fill a patch
    times: list[float]  # seconds, one per entry of `indices`
    rate: float  # sampled frames per second (0.0 when the container gives no rate, Preview)
    frames: int  # sampled frames before padding: the divisor of the per-frame pixel budget


def sample_plan(total_frames: int, fps: float, cfg: VideoConfig = VideoConfig()) -> SamplePlan:
    """The frames to sample and their times; ValueError when the video has too few frames.

    2.0 (`fetch="ming2"`, bailingmm_utils_video.py: `v1_fetch_video` with the `v2_sample_video`
    sampler): the rate clamped to [1, 240] fps as its torchcodec reader does, round(duration ·
    min(max_fps, fps)) frames clamped to [min_frames, max_frames], evenly spaced; frame i is at
    i / sampled rate; an odd count repeats the last frame at (last time · padding), as upstream does.
    """
    if cfg.fetch == "preview":
        n = sample_count(total_frames, fps, cfg)
        rate, pad = (n / total_frames * fps if fps else 0.0), 0
    else:
        fps = min(max(fps, 1.0), 240.0)
        duration = total_frames / fps
        n = max(cfg.min_frames, min(cfg.max_frames, int(duration * min(cfg.max_fps, fps) + 0.5)))
        if n > total_frames:
            raise ValueError(f"has {total_frames} frames; at least {cfg.min_frames} are needed")
        rate, pad = n / duration, -n % cfg.frame_factor
    indices = sample_indices(n, total_frames)
    times = [i / rate if rate else 0.0 for i in range(n)]
    return SamplePlan(indices + indices[-1:] * pad, times + [times[-1] * pad] * pad, rate, n)


def frame_size(height: int, width: int, n: int, cfg: VideoConfig = VideoConfig()) -> tuple[int, int]:
    """Per-frame (height, width): multiples of the factor (28; 2.0: 32) within [min_pixels,
    total_pixels·2 / n] pixels, n = the sampled frames before padding."""
    max_pixels = max(cfg.total_pixels / n * cfg.frame_factor, int(cfg.min_pixels * 1.05))
    h, w = smart_resize(height, width, cfg.factor, cfg.min_pixels, max_pixels, cfg.fetch == "ming2")
    return max(cfg.factor, h), max(cfg.factor, w)


def video_grid(
    height: int, width: int, total_frames: int, fps: float, cfg: VideoConfig = VideoConfig()
) -> tuple[int, int, int]:
    """The (t, h, w) patch grid of a video, from its metadata alone."""
    plan = sample_plan(total_frames, fps, cfg)
    h, w = frame_size(height, width, plan.frames, cfg)
    return len(plan.indices) // cfg.frame_factor, h // cfg.patch_size, w // cfg.patch_size


def patch_times(times: list[float], temporal: int) -> list[float]:
    """One time per temporal patch: the mean of its first and last frame's (2.0's image processor)."""
    return [(times[k] + times[k + temporal - 1]) / 2.0 for k in range(0, len(times), temporal)]


# ---- decoding ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoProbe:
    height: int
    width: int
    total_frames: int
    fps: float  # 0.0 when the container does not say


def probe(data: bytes, index: int, cfg: VideoConfig) -> VideoProbe:
    """Size, frame count and rate from a demux-only pass; MediaError for anything over the limits."""
    if not data:
        raise part_error("video", index, "is empty (no bytes)")
    if len(data) > cfg.max_bytes:
        raise part_error("video", index, f"is {len(data)} bytes, more than the limit of {cfg.max_bytes}")
    with _open(data, index) as container:
        stream = container.streams.video[0]
        if stream.codec_context is None:  # FFmpeg found the stream but not its codec parameters
            raise part_error("video", index, "has a video stream without codec parameters (cut short?)")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > cfg.max_frame_pixels or min(width, height) < 1:
            raise part_error(
                "video",
                index,
                f"has {width}x{height} frames, over the limit of "
                f"{cfg.max_frame_pixels / 1e6:.1f} megapixels per frame",
            )
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        total = 0
        for packet in _guard(container.demux(stream), index):
            total += packet.size > 0
            if total > cfg.max_source_frames:
                raise part_error("video", index, f"has more than {cfg.max_source_frames} frames")
    if fps > 0 and total / fps > cfg.max_seconds:
        raise part_error(
            "video", index, f"is {total / fps:.1f} s long, more than the limit of {cfg.max_seconds:g} s"
        )
    return VideoProbe(height, width, total, fps)


def _open(data: bytes, index: int):
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise part_error("video", index, f"not a decodable video ({describe(exc)})") from None
    if not container.streams.video:
        container.close()
        raise part_error("video", index, "has no video stream (not a video file?)")
    return container


def _guard(items, index: int):
    """Re-raise FFmpeg errors while iterating packets/frames as MediaError."""
    try:
        yield from items
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise part_error("video", index, f"cannot be decoded ({describe(exc)})") from None


def decode_frames(data: bytes, index: int, info: VideoProbe, cfg: VideoConfig) -> list[Image.Image]:
    """The sampled frames as RGB pictures resized (Pillow bicubic) to the video's frame size."""
    return _decode_plan(data, index, info, cfg, plan_for(info, index, cfg))


def plan_for(info: VideoProbe, index: int, cfg: VideoConfig) -> SamplePlan:
    """`sample_plan` of a probed video; MediaError naming the part when it has too few frames."""
    try:
        return sample_plan(info.total_frames, info.fps, cfg)
    except ValueError as exc:
        raise part_error("video", index, str(exc)) from None


def _decode_plan(
    data: bytes, index: int, info: VideoProbe, cfg: VideoConfig, plan: SamplePlan
) -> list[Image.Image]:
    wanted = plan.indices
    h, w = frame_size(info.height, info.width, plan.frames, cfg)
    kept: dict[int, Image.Image] = {}
    with _open(data, index) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        targets = set(wanted)
        for i, frame in enumerate(_guard(container.decode(stream), index)):
            if i in targets:
                kept[i] = frame.to_image().convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
            if i >= wanted[-1]:
                break
    if not kept:
        raise part_error("video", index, "holds no decodable frames")
    # A demuxed packet is not always a frame: a sample past the decoded end repeats the last one.
    last = kept[max(kept)]
    return [kept.get(i, last) for i in wanted]


def video_patches(
    frames: list[Image.Image], patcher: VisionPatcher, temporal: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Equal-size frames -> ((T'·h·w, P) patches, (T', h, w)); consecutive frames share a patch."""
    single, grids = patcher(frames, resize=False)  # each frame as a t=1 image: (n·h·w, P)
    n = len(frames)
    _, gh, gw = (int(v) for v in grids[0])
    p = patcher.cfg.patch_size
    per_frame = single.view(n, gh * gw, 3, temporal, p, p)[:, :, :, 0]  # (n, hw, C, p, p)
    pairs = per_frame.view(n // temporal, temporal, gh * gw, 3, p, p)  # (T', tp, hw, C, p, p)
    patches = pairs.permute(0, 2, 3, 1, 4, 5)  # (T', hw, C, tp, p, p): Qwen2-VL's patch layout
    return patches.reshape(n // temporal * gh * gw, 3 * temporal * p * p), (n // temporal, gh, gw)


def process_videos(
    videos: list[bytes], cfg: VideoConfig, patcher: VisionPatcher
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Raw videos -> (pixel_values_videos (N, P), video_grid_thw (v, 3), sampled fps per video)."""
    pixel_values, grid, rates, _ = process_videos_timed(videos, cfg, patcher)
    return pixel_values, grid, rates


def process_videos_timed(
    videos: list[bytes], cfg: VideoConfig, patcher: VisionPatcher
) -> tuple[torch.Tensor, torch.Tensor, list[float], list[list[float]]]:
    """`process_videos` and, per video, each temporal patch's time in seconds (`patch_times`)."""
    all_patches, grids, rates, times = [], [], [], []
    for i, data in enumerate(videos):
        info = probe(data, i, cfg)
        plan = plan_for(info, i, cfg)
        frames = _decode_plan(data, i, info, cfg, plan)
        patches, grid = video_patches(frames, patcher, cfg.frame_factor)
        all_patches.append(patches)
        grids.append(grid)
        rates.append(plan.rate)
        times.append(patch_times(plan.times, cfg.frame_factor))
    return torch.cat(all_patches), torch.tensor(grids, dtype=torch.long), rates, times


__all__ = [
    "SamplePlan",
    "VideoConfig",
    "VideoProbe",
    "decode_frames",
    "frame_size",
    "patch_times",
    "probe",
    "process_videos",
    "process_videos_timed",
    "sample_count",
    "sample_indices",
    "sample_plan",
    "video_grid",
    "video_patches",
]
