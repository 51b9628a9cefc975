"""`MingProcessor`: a prompt or messages + raw media bytes -> `MingInputs`, what the thinker takes.

Flow: text (`render_chat` for messages) -> images (`process_images`), videos (`process_videos`),
audio (`process_audios`) -> token counts per part -> `expand_placeholders` -> the checkpoint's
tokenizer -> `check_media_tokens` (+ audio loc/lens). Field names equal the upstream processor's
(and the golden inputs.safetensors'); every user mistake raises `MediaError` naming the part.
The release's settings come from the checkpoint (`configs_from_folder`): 2.0 patches are 16 px
(sides in multiples of 32) and, when preprocessor_config.json says so, videos are written as timed
frames (`<t seconds>` + one `<image>` block per temporal patch) with one video_grid_thw row each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from engine.errors import CheckpointError
from engine.tokenizer import load_tokenizer, require
from models.ming.config import MING_2_0, ming_version
from models.ming.processing.audio import AudioConfig, audio_tokens, process_audios
from models.ming.processing.errors import MediaError
from models.ming.processing.image import ImageConfig, VisionPatcher, grid_tokens, process_images
from models.ming.processing.prompt import (
    SpecialTokens,
    check_media_tokens,
    check_placeholders,
    expand_placeholders,
    render_chat,
)
from models.ming.processing.video import VideoConfig, process_videos_timed


@dataclass
class MingInputs:
    """One request's thinker inputs. Dimension legend in each module; B = 1 here."""

    input_ids: torch.Tensor  # (1, L) int64
    attention_mask: torch.Tensor  # (1, L) int64, all ones
    pixel_values: torch.Tensor | None = None  # (N_img, 1176) float32
    image_grid_thw: torch.Tensor | None = None  # (I, 3) int64
    pixel_values_videos: torch.Tensor | None = None  # (N_vid, 1176) float32
    video_grid_thw: torch.Tensor | None = None  # (V, 3) int64
    audio_feats: torch.Tensor | None = None  # (A, T_max, 128) float32, zero-padded
    audio_feats_lengths: torch.Tensor | None = None  # (1, A) int64: mel frames per clip
    audio_placeholder_loc_lens: torch.Tensor | None = None  # (1, A, 2) int64: [first <audioPatch>, L]
    video_sample_fps: tuple[float, ...] = ()  # frames per second actually sampled, per video
    video_timestamps: tuple[tuple[float, ...], ...] = ()  # per video, seconds per temporal patch
    prompt_text: str = ""  # the text before placeholder expansion

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensor fields that are set, by name."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    def media(self) -> dict[str, torch.Tensor]:
        """The media tensors alone (`tensors()` without input_ids / attention_mask): what the
        thinker's `prepare_prompt` and the engine's `MediaInputs` take; empty for a text prompt."""
        return {k: v for k, v in self.tensors().items() if k not in ("input_ids", "attention_mask")}

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])


class MingProcessor:
    """Tokenizer + image/audio/video front ends of one Ming checkpoint (flash Preview layout)."""

    def __init__(
        self,
        tokenizer: Any,
        image: ImageConfig | None = None,
        audio: AudioConfig | None = None,
        video: VideoConfig | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.tokens = SpecialTokens.from_tokenizer(tokenizer)
        self.image_config = image or ImageConfig()
        self.audio_config = audio or AudioConfig()
        self.video_config = video or VideoConfig()
        img, vid = self.image_config, self.video_config
        video_geometry = (vid.patch_size, vid.factor, vid.frame_factor)
        image_geometry = (img.patch_size, img.factor, img.temporal_patch_size)
        if video_geometry != image_geometry:
            raise ValueError(
                f"video (patch_size, factor, frame_factor) {video_geometry} must equal the image config's "
                f"(patch_size, patch·merge, temporal_patch_size) {image_geometry}"
            )
        self.patcher = VisionPatcher(self.image_config)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        image: Mapping[str, Any] | None = None,
        audio: Mapping[str, Any] | None = None,
        video: Mapping[str, Any] | None = None,
    ) -> MingProcessor:
        """From a checkpoint folder: tokenizer files, config.json, preprocessor_config.json if any.

        `image` / `audio` / `video` override config fields (e.g. image={"min_pixels": 56 * 56}).
        """
        folder = Path(folder)
        tokenizer = require(load_tokenizer(folder), folder, "Ming's processor")
        img, aud, vid = configs_from_folder(folder)
        return cls(
            tokenizer,
            replace(img, **dict(image or {})),
            replace(aud, **dict(audio or {})),
            replace(vid, **dict(video or {})),
        )

    def process(
        self,
        messages_or_prompt: str | Sequence[Mapping[str, Any]],
        images: Sequence[bytes] = (),
        audios: Sequence[bytes] = (),
        videos: Sequence[bytes] = (),
        thinking: bool = False,
    ) -> MingInputs:
        """A raw prompt (with `<IMAGE>`/`<AUDIO>`/`<VIDEO>` placeholders) or chat messages, and the
        media bytes in placeholder order -> `MingInputs`; MediaError for anything a client got wrong.
        """
        text = self.prompt_text(messages_or_prompt, len(images), len(audios), len(videos), thinking)
        out: dict[str, Any] = {}
        image_counts: list[int] = []
        video_counts: list[int] = []
        audio_counts: list[int] = []
        merge = self.image_config.merge_size
        if images:
            out["pixel_values"], out["image_grid_thw"] = process_images(
                list(images), self.image_config, self.patcher
            )
            image_counts = [grid_tokens(g, merge) for g in out["image_grid_thw"]]
        video_times = None
        if videos:
            pv, grid, rates, times = process_videos_timed(list(videos), self.video_config, self.patcher)
            video_counts = [grid_tokens(g, merge) for g in grid]
            if self.video_config.interleaved_timestamps:  # one (1, h, w) row per timed frame
                video_times, grid = times, frame_grids(grid)
            out.update(pixel_values_videos=pv, video_grid_thw=grid, video_sample_fps=tuple(rates))
            out["video_timestamps"] = tuple(tuple(t) for t in times)
        if audios:
            feats, frames = process_audios(list(audios), self.audio_config)
            out.update(audio_feats=feats, audio_feats_lengths=frames[None, :])  # (1, A)
            audio_counts = [audio_tokens(int(n), self.audio_config) for n in frames]
        expanded = expand_placeholders(text, image_counts, video_counts, audio_counts, video_times)
        ids = self.tokenizer.encode(expanded, add_special_tokens=False)
        timed = sum(len(t) for t in video_times) if video_times else 0  # frames opened by <image>
        loc_lens = check_media_tokens(ids, self.tokens, image_counts, video_counts, audio_counts, timed)
        if audios:
            out["audio_placeholder_loc_lens"] = torch.tensor([loc_lens], dtype=torch.long)  # (1, A, 2)
        input_ids = torch.tensor([ids], dtype=torch.long)
        return MingInputs(input_ids, torch.ones_like(input_ids), prompt_text=text, **out)

    def prompt_text(
        self,
        messages_or_prompt: str | Sequence[Mapping[str, Any]],
        n_images: int,
        n_audios: int,
        n_videos: int,
        thinking: bool = False,
    ) -> str:
        """The chat text with placeholders; a raw prompt is taken as it is."""
        sent = {"image": n_images, "audio": n_audios, "video": n_videos}
        if isinstance(messages_or_prompt, str):
            check_placeholders(messages_or_prompt, sent)
            return messages_or_prompt
        text, counts = render_chat(messages_or_prompt, self.tokens.eos, thinking)
        for kind, n in counts.items():
            if n != sent[kind]:
                raise MediaError(
                    f"the messages hold {n} {kind} item(s) but the request sent {sent[kind]} {kind} part(s)"
                )
        return text


def frame_grids(grid: torch.Tensor) -> torch.Tensor:
    """video_grid_thw (v, 3) -> one (1, h, w) row per temporal patch (2.0's interleaved layout)."""
    rows = torch.repeat_interleave(grid, grid[:, 0], dim=0)  # (Σ t, 3)
    rows[:, 0] = 1
    return rows


def configs_from_folder(folder: Path) -> tuple[ImageConfig, AudioConfig, VideoConfig]:
    """The processing configs a checkpoint implies: config.json geometry (and release: `ming_version`
    of its vision_config), preprocessor_config.json pixel bounds, normalisation and interleaved frame
    timestamps (upstream defaults where it has none), the encoder's n_ctx as the audio length limit.
    Invalid values raise ValueError naming the field."""
    config = _read_json(folder / "config.json")
    pre = _read_json(folder / "preprocessor_config.json")
    vision = config.get("vision_config") or {}
    ming2 = ming_version(vision) == MING_2_0
    patch = int(pre.get("patch_size", vision.get("patch_size", 16 if ming2 else 14)))
    merge = int(pre.get("merge_size", vision.get("spatial_merge_size", 2)))
    temporal = int(pre.get("temporal_patch_size", vision.get("temporal_patch_size", 2)))
    image = ImageConfig(patch_size=patch, merge_size=merge, temporal_patch_size=temporal)
    video = VideoConfig(factor=patch * merge, patch_size=patch, frame_factor=temporal)
    if ming2:
        interleaved = pre.get("use_interleaved_frame_timestamp", False)  # upstream: off when absent
        if not isinstance(interleaved, bool):
            raise ValueError(
                f"preprocessor_config.json field 'use_interleaved_frame_timestamp' must be a bool, "
                f"got {interleaved!r}"
            )
        image, video = ming2_settings(image, video, interleaved)
    for key in ("min_pixels", "max_pixels"):
        if key in pre:
            image = replace(image, **{key: int(pre[key])})
    for key in ("image_mean", "image_std"):
        if key in pre:
            image = replace(image, **{key: tuple(float(v) for v in pre[key])})
    audio_cfg = config.get("audio_config") or {}
    whisper = audio_cfg.get("whisper_encoder_config") or {}
    n_mels = int((pre.get("whisper_frontend_args") or {}).get("n_mels", whisper.get("n_mels", 128)))
    audio = AudioConfig(
        n_mels=n_mels,
        ds_kernel_size=int(audio_cfg.get("ds_kernel_size", 3)),
        ds_stride=int(audio_cfg.get("ds_stride", 2)),
    )
    if "n_ctx" in whisper:  # encoder positions after its stride-2 conv: 2·n_ctx mel frames at most
        limit = 2 * int(whisper["n_ctx"]) * audio.hop_length / audio.sample_rate
        audio = replace(audio, max_seconds=min(audio.max_seconds, limit))
    return image, audio, video


def ming2_settings(
    image: ImageConfig, video: VideoConfig, interleaved: bool
) -> tuple[ImageConfig, VideoConfig]:
    """2.0's processing constants at the checkpoint's factor f (32): image processor bounds 64² ..
    1280·f² pixels (its class defaults, before preprocessor_config.json), fetch_image within
    [4, 16384]·f² with sides of at least f, refusals below one patch; videos by `fetch="ming2"`, per
    frame 128·f² .. 96·128·f²·2 / n pixels, 1..170 frames (image_processing_bailingmm2.py,
    bailingmm_utils.py, bailingmm_utils_video.py)."""
    f = image.factor
    image = replace(
        image, min_pixels=64 * 64, max_pixels=1280 * f * f, fetch_min_pixels=4 * f * f,
        fetch_max_pixels=16384 * f * f, fetch_at_least_factor=True, min_side=image.patch_size,
    )  # fmt: skip
    video = replace(
        video, min_pixels=128 * f * f, total_pixels=96 * 128 * f * f, min_frames=1, max_frames=170,
        fetch="ming2", interleaved_timestamps=interleaved,
    )  # fmt: skip
    return image, video


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


__all__ = ["MingInputs", "MingProcessor", "configs_from_folder", "frame_grids", "ming2_settings"]
