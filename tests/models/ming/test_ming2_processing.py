"""Ming 2.0's processing, from the 2.0 demo checkpoint's own files: patch 16 / merge 2 (sides in
multiples of 32, fetch_image's at-least-one-factor rounding, preprocessor_config.json's pixel
bounds), 2.0's video sampling, and interleaved frame timestamps: the prompt's token layout
(`<video>` + per temporal patch `<t seconds><image>` N x `<framePatch>` `</image>` + `</video>`),
one video_grid_thw row per frame, and the 3-row positions of those frame blocks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from bailing.demo.ming2 import Ming2DemoSpec, write_ming2_checkpoint
from engine.model_loader import load_model
from models.ming.language import IMAGE_GATE
from models.ming.positions import VisionTokens, position_ids
from models.ming.processing import (
    ImageConfig,
    MediaError,
    MingProcessor,
    VideoConfig,
    configs_from_folder,
    image_grid,
)
from models.ming.processing.processor import ming2_settings
from models.ming.processing.video import patch_times, sample_plan
from tests.models.ming.processing_media import mp4_bytes, png_bytes, ramp_video

# Small per-frame budgets for the tests: 64 x 64 frames (4 LLM tokens each).
SMALL_VIDEO = {"min_pixels": 64 * 64, "total_pixels": 8 * 64 * 64}


@pytest.fixture(scope="module")
def demo2(tmp_path_factory):
    return write_ming2_checkpoint(tmp_path_factory.mktemp("ming2p") / "ming2", seed=5)


@pytest.fixture(scope="module")
def processor(demo2) -> MingProcessor:
    return MingProcessor.from_pretrained(demo2, video=SMALL_VIDEO)


@pytest.fixture(scope="module")
def thinker(demo2):
    return load_model(demo2, torch.device("cpu"), torch.float32)


def picture(height: int, width: int) -> bytes:
    return png_bytes(((np.indices((height, width, 3)).sum(0) * 29) % 256).astype(np.uint8))


def test_the_checkpoint_sets_2_0_processing(demo2):
    image, _, video = configs_from_folder(demo2)
    pre = json.loads((demo2 / "preprocessor_config.json").read_text())
    assert (image.patch_size, image.merge_size, image.factor, image.patch_dim) == (16, 2, 32, 1536)
    assert (image.min_pixels, image.max_pixels) == (pre["min_pixels"], pre["max_pixels"])
    assert (image.fetch_min_pixels, image.fetch_max_pixels) == (4 * 32 * 32, 16384 * 32 * 32)
    assert image.fetch_at_least_factor and image.min_side == 16
    assert (video.factor, video.patch_size, video.fetch, video.interleaved_timestamps) == (
        32,
        16,
        "ming2",
        True,
    )
    assert (video.min_pixels, video.total_pixels, video.max_frames) == (
        128 * 32 * 32,
        96 * 128 * 32 * 32,
        170,
    )


@pytest.mark.parametrize(
    ("height", "width", "grid"),
    [
        (200, 300, (1, 10, 16)),  # fetch 192 x 288, then above max_pixels: 160 x 256
        (64, 64, (1, 4, 4)),
        (16, 400, (1, 2, 24)),  # 2.0's fetch: a 16-px side rounds up to 32 (the Preview rule: 32 x 320)
        (300, 40, (1, 18, 2)),
    ],
)
def test_image_grids_at_factor_32(processor, height, width, grid):
    inputs = processor.process("<IMAGE>", images=[picture(height, width)])
    assert (
        tuple(inputs.image_grid_thw[0].tolist()) == grid == image_grid(height, width, processor.image_config)
    )
    assert inputs.pixel_values.shape == (grid[1] * grid[2], 1536)
    ids = inputs.input_ids[0].tolist()
    assert ids.count(processor.tokens.image_patch) == grid[1] * grid[2] // 4


def test_a_picture_smaller_than_one_patch_is_refused(processor):
    with pytest.raises(MediaError, match="at least 16 pixels"):
        processor.process("<IMAGE>", images=[picture(12, 200)])


def test_2_0_video_sampling_and_times():
    """10 frames at 4 fps (2.5 s): round(2.5 s x 2 fps) = 5 frames at 2 fps, the 5th repeated."""
    cfg = ming2_settings(ImageConfig(patch_size=16), VideoConfig(factor=32, patch_size=16), True)[1]
    plan = sample_plan(10, 4.0, cfg)
    assert plan.indices == [0, 2, 4, 6, 9, 9] and plan.frames == 5 and plan.rate == 2.0
    assert plan.times == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert patch_times(plan.times, 2) == [0.25, 1.25, 2.0]
    assert sample_plan(3, 30.0, cfg).indices == [0, 0]  # 0.1 s: one frame, padded (no 4-frame minimum)
    assert len(sample_plan(36000, 30.0, cfg).indices) == 170  # 20 min at 2 fps, capped


def test_a_video_prompt_with_interleaved_timestamps(processor):
    inputs = processor.process("<VIDEO>Describe it.", videos=[mp4_bytes(ramp_video(10), 4)])
    assert inputs.video_grid_thw.tolist() == [[1, 4, 4]] * 3  # one row per temporal patch
    assert inputs.video_timestamps == ((0.25, 1.25, 2.0),) and inputs.video_sample_fps == (2.0,)
    assert inputs.pixel_values_videos.shape == (3 * 16, 1536)
    frame = "<image>" + "<framePatch>" * 4 + "</image>"
    expected = f"<video><0.2 seconds>{frame}<1.2 seconds>{frame}<2.0 seconds>{frame}</video>Describe it."
    assert processor.tokenizer.decode(inputs.input_ids[0].tolist()) == expected


def test_interleaved_video_positions(processor, thinker):
    inputs = processor.process("Look: <VIDEO>ok?", videos=[mp4_bytes(ramp_video(10), 4)])
    tokens = thinker.config.tokens
    assert tokens.interleaved_video
    with torch.inference_mode():
        prompt = thinker.prepare_prompt(inputs.input_ids, **inputs.media())
    ids = prompt.ids.tolist()
    t, h, w = prompt.positions.tolist()
    starts = [k for k in range(len(ids) - 1) if ids[k] == tokens.image_start]
    assert len(starts) == 3
    for k in starts:  # each frame: a t = 1 block of 2 x 2 merged units right after its <image>
        assert ids[k + 1 : k + 5] == [tokens.video_patch] * 4
        st = t[k] + 1
        assert t[k + 1 : k + 5] == [st] * 4
        assert h[k + 1 : k + 5] == [st, st, st + 1, st + 1] and w[k + 1 : k + 5] == [st, st + 1, st, st + 1]
        assert t[k + 5] == st + 1  # `</image>` continues at max(t) + 1
    text = [i for i in range(len(ids)) if ids[i] != tokens.video_patch]
    assert all(t[i] == h[i] == w[i] for i in text) and t[-1] == t[text[-2]] + 1
    assert prompt.rope_delta == max(max(t), max(h), max(w)) + 1 - len(ids) == -3 * 3  # 4 tokens, 1 step
    assert prompt.gate.tolist() == [IMAGE_GATE if i == tokens.video_patch else 0 for i in ids]
    whole = torch.tensor([[3, 4, 4]])  # the same patches as one (t, h, w) grid encode the same
    with torch.inference_mode():
        rows = thinker.encode_images(inputs.pixel_values_videos, whole)
    assert torch.allclose(rows, prompt.media_rows, atol=1e-6)


def test_interleaved_positions_by_hand():
    """[T, <video>, a, b, <image>, 4 x F, </image>, c, <image>, 4 x F, </image>, </video>, T], grid
    (2, 4, 4) unsplit: frame blocks at t = 5 and 9, text continuing at max(t) + 1."""
    T, VID, VEND, IMG, IEND, F, a, b, c = 1, 2, 3, 4, 5, 6, 7, 8, 9
    tokens = VisionTokens(image_start=IMG, image_patch=10, video_start=IEND, video_patch=F)
    ids = [T, VID, a, b, IMG, F, F, F, F, IEND, c, IMG, F, F, F, F, IEND, VEND, T]
    timed = dataclasses.replace(tokens, interleaved_video=True)
    pos, delta = position_ids(ids, timed, video_grids=[(2, 4, 4)], second_per_grid_ts=[0.5])
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 5, 5, 5, 5, 6, 7, 8, 9, 9, 9, 9, 10, 11, 12]
    assert pos[1].tolist() == [0, 1, 2, 3, 4, 5, 5, 6, 6, 6, 7, 8, 9, 9, 10, 10, 10, 11, 12]
    assert pos[2].tolist() == [0, 1, 2, 3, 4, 5, 6, 5, 6, 6, 7, 8, 9, 10, 9, 10, 10, 11, 12]
    assert delta == 13 - len(ids)
    split, _ = position_ids(ids, timed, video_grids=[(1, 4, 4), (1, 4, 4)])
    assert torch.equal(split, pos)
    plain, zero = position_ids(ids, tokens, video_grids=[(2, 4, 4)])  # not interleaved: no block found
    assert plain.tolist() == [list(range(len(ids)))] * 3 and zero == 0


def test_without_the_flag_videos_keep_the_preview_layout(demo2, tmp_path):
    import shutil

    folder = shutil.copytree(demo2, tmp_path / "flat")
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(
        json.dumps({**pre, "use_interleaved_frame_timestamp": False})
    )
    flat = MingProcessor.from_pretrained(folder, video=SMALL_VIDEO)
    inputs = flat.process("<VIDEO>", videos=[mp4_bytes(ramp_video(10), 4)])
    assert inputs.video_grid_thw.tolist() == [[3, 4, 4]]
    text = flat.tokenizer.decode(inputs.input_ids[0].tolist())
    assert text == "<video>" + "<framePatch>" * 12 + "</video>\n"
    bad = {**pre, "use_interleaved_frame_timestamp": "true"}
    (folder / "preprocessor_config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="use_interleaved_frame_timestamp"):
        configs_from_folder(folder)


def test_spec_defaults_match_the_demo_files(demo2):
    spec = Ming2DemoSpec()
    image, _, _ = configs_from_folder(demo2)
    assert (image.min_pixels, image.max_pixels) == (spec.min_pixels, spec.max_pixels)
