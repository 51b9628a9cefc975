"""Ming's 3-row positions and rope delta: the golden text / image / image_windows / audio cases and
the spec's worked examples (A: a 2x2 image, B: a 3x4 image, C: a 3-frame video, D: the Preview's
video start token that never matches, so the video gets 1-D positions)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from models.ming.positions import VisionTokens, decode_positions, position_ids
from tests.conftest import SHARED

GOLDEN = SHARED / "golden" / "ming-tiny"
TINY = VisionTokens(image_start=998, image_patch=997, video_start=999, video_patch=1015)
T, IMG, PATCH, END, VID, FRAME = 5, 100, 101, 102, 103, 104  # ids of the worked examples
EXAMPLE = VisionTokens(image_start=IMG, image_patch=PATCH, video_start=VID, video_patch=FRAME)


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_dir():
        pytest.skip("shared Ming golden data not found")
    return json.loads((GOLDEN / "expected.json").read_text()), load_file(GOLDEN / "inputs.safetensors")


@pytest.mark.parametrize("case", ["text", "image", "image_windows", "audio"])
def test_golden_positions_and_rope_delta(golden, case):
    exp, tensors = golden
    c = exp["cases"][case]
    grids = tensors[f"{case}.image_grid_thw"].tolist() if f"{case}.image_grid_thw" in tensors else []
    pos, delta = position_ids(c["input_ids"], TINY, grids)
    assert pos.tolist() == c["position_ids_rows_t_h_w"]
    assert delta == c["rope_delta"]
    stored = tensors[f"{case}.position_ids"]  # (3, 1, L)
    assert torch.equal(pos, stored[:, 0, :].long())


def test_example_a_two_by_two_image():
    ids = [T, T, IMG, *[PATCH] * 4, END, T]
    pos, delta = position_ids(ids, EXAMPLE, [(1, 4, 4)])
    assert pos.tolist() == [
        [0, 1, 2, 3, 3, 3, 3, 4, 5],
        [0, 1, 2, 3, 3, 4, 4, 4, 5],
        [0, 1, 2, 3, 4, 3, 4, 4, 5],
    ]
    assert delta == -3


def test_example_b_three_by_four_image():
    pos, delta = position_ids([T, IMG, *[PATCH] * 12, END, T], EXAMPLE, [(1, 6, 8)])
    assert pos[0].tolist() == [0, 1, *[2] * 12, 3, 4]
    assert pos[1].tolist() == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4]
    assert pos[2].tolist() == [0, 1, *[1, 2, 3, 4] * 3, 3, 4]
    assert delta == -11


def test_example_c_video_frames_step_by_two():
    pos, delta = position_ids([T, VID, *[FRAME] * 12, END, T], EXAMPLE, video_grids=[(3, 4, 4)])
    assert pos[0].tolist() == [0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6, 7, 8]
    assert delta == -7
    slow, _ = position_ids(
        [T, VID, *[FRAME] * 12, END, T], EXAMPLE, [], [(3, 4, 4)], second_per_grid_ts=[1.25]
    )
    assert slow[0].tolist()[2::4][:3] == [2, 4, 7]  # t = 2 + 2.5 k, truncated


def test_example_d_the_preview_video_start_token_never_matches():
    preview = VisionTokens(image_start=IMG, image_patch=PATCH, video_start=END, video_patch=FRAME)
    ids = [T, VID, *[FRAME] * 12, END, T]
    pos, delta = position_ids(ids, preview, video_grids=[(3, 4, 4)])
    assert all(row == list(range(16)) for row in pos.tolist()) and delta == 0


def test_decode_positions_and_a_missing_grid():
    assert decode_positions(49, -23).tolist() == [[26], [26], [26]]
    with pytest.raises(ValueError, match="image grids"):
        position_ids([T, IMG, PATCH], EXAMPLE, [])


def test_video_rope_rows_and_three_row_rotary():
    from engine.config import RopeConfig
    from engine.layers.rotary import RotaryEmbedding
    from models.ming.positions import video_rope_rows

    rows = video_rope_rows()
    assert rows.tolist() == [1, 2] * 12 + [0] * 8
    rope = RotaryEmbedding(RopeConfig(head_dim=128, rotary_dim=64, theta=600000.0, max_position=32768))
    rope.set_position_rows(rows)
    flat = torch.arange(10)
    same = torch.stack([flat, flat, flat])  # equal rows: exactly the 1-D rotary
    one = RotaryEmbedding(
        RopeConfig(head_dim=128, rotary_dim=64, theta=600000.0, max_position=32768)
    ).cos_sin(flat, torch.float32)
    three = rope.cos_sin(same, torch.float32)
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1])
    pos = torch.stack([flat, flat + 100, flat + 200])  # t, h, w
    cos, _ = rope.cos_sin(pos, torch.float32)
    f = rope.inv_freq
    assert torch.allclose(cos[3, 0], torch.cos(torch.tensor(103.0) * f[0]))  # frequency 0: h
    assert torch.allclose(cos[3, 1], torch.cos(torch.tensor(203.0) * f[1]))  # frequency 1: w
    assert torch.allclose(cos[3, 30], torch.cos(torch.tensor(3.0) * f[30]))  # frequency 30: t
    assert torch.equal(cos[:, :32], cos[:, 32:])  # cat(f, f)
