"""Ming's 3-row position ids (VideoRoPE, the Preview thinker's `get_t_scale_rope_index`) and rope delta.

Legend: L = prompt tokens; rows are (t, h, w). Pure: token ids + grids -> positions [3, L], delta.
- Text and audio tokens: t = h = w = running index.
- A vision block is detected where its start token is immediately followed by its patch token
  (image: `<image>` + `<imagePatch>`; video: the config's `video_start_token` + `<framePatch>`: the
  Preview ships `video_start_token` = `</image>`, which never precedes `<framePatch>`, so its videos
  get plain 1-D positions; that is what the official code does and what we reproduce). With 2.0's
  interleaved frame timestamps each video frame is its own block, `<image>` + `<framePatch>`, and
  each video grid (t, h, w) counts as t grids (1, h, w), one per block, in order. Its t*h*w/4
  patch tokens (merge 2x2), for frame k, merged row r and column c of an (H', W') grid, get
  t = st + tau*k (tau = 2.0, times second_per_grid_t when given; truncated to an integer),
  h = t + r - floor((H'-1)/2), w = t + c - floor((W'-1)/2), where st = the index after the start
  token; the next token continues at max(t of the block) + 1.
- rope_delta = max position + 1 - L; a decode token at cache length n sits at n + rope_delta on
  every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

T_SCALE = 2.0  # the Preview's scale_factor for a frame's temporal step


@dataclass(frozen=True)
class VisionTokens:
    """The ids that mark vision blocks (from the LLM config: image/video start and patch tokens)."""

    image_start: int
    image_patch: int
    video_start: int
    video_patch: int
    merge: int = 2
    interleaved_video: bool = False  # 2.0: video frames are `<image>` + `<framePatch>` blocks


def position_ids(
    ids: Sequence[int],
    tokens: VisionTokens,
    image_grids: Sequence[Sequence[int]] = (),
    video_grids: Sequence[Sequence[int]] = (),
    second_per_grid_ts: Sequence[float] | None = None,
) -> tuple[torch.Tensor, int]:
    """ids [L] + grids (t, h, w) in patch units, in order -> (positions [3, L] int64, rope_delta)."""
    ids = list(ids)
    video_start = tokens.video_start
    if tokens.interleaved_video:  # one block per frame; tau never applies to a t = 1 block
        video_start, second_per_grid_ts = tokens.image_start, None
        video_grids = [(1, h, w) for t, h, w in video_grids for _ in range(int(t))]
    images, videos = iter(image_grids), iter(video_grids)
    rows: list[list[int]] = [[], [], []]
    pos, i, video_index = 0, 0, 0
    while i < len(ids):
        start = ids[i]
        nxt = ids[i + 1] if i + 1 < len(ids) else None
        is_image = start == tokens.image_start and nxt == tokens.image_patch
        is_video = start == video_start and nxt == tokens.video_patch
        for r in rows:  # the token itself (the start token included) is text
            r.append(pos)
        pos += 1
        i += 1
        if not (is_image or is_video):
            continue
        grid = next(images if is_image else videos, None)
        if grid is None:
            kind = "image" if is_image else "video"
            raise ValueError(f"more {kind} blocks in the prompt than {kind} grids")
        tau = T_SCALE
        if is_video:
            if second_per_grid_ts is not None:
                tau = T_SCALE * float(second_per_grid_ts[video_index])
            video_index += 1
        frames, hh, ww = (int(x) for x in grid)
        h2, w2 = hh // tokens.merge, ww // tokens.merge
        block = _block(pos, frames, h2, w2, tau)
        for r, values in zip(rows, block, strict=True):
            r.extend(values)
        i += len(block[0])
        pos = max(block[0]) + 1
    positions = torch.tensor(rows, dtype=torch.long)  # (3, L)
    delta = int(positions.max()) + 1 - len(ids) if ids else 0
    return positions, delta


def _block(st: int, frames: int, h2: int, w2: int, tau: float) -> tuple[list[int], list[int], list[int]]:
    """(t, h, w) of a vision block's patch tokens in frame, row, column order."""
    t_rows, h_rows, w_rows = [], [], []
    dh, dw = (h2 - 1) // 2, (w2 - 1) // 2
    for k in range(frames):
        t = int(st + tau * k)  # int64 storage truncates a fractional step
        for r in range(h2):
            for c in range(w2):
                t_rows.append(t)
                h_rows.append(t + r - dh)
                w_rows.append(t + c - dw)
    return t_rows, h_rows, w_rows


def decode_positions(cache_len: int, rope_delta: int) -> torch.Tensor:
    """The next token's positions [3, 1]: every row at cache_len + rope_delta."""
    return torch.full((3, 1), cache_len + rope_delta, dtype=torch.long)


def video_rope_rows(num_freqs: int = 32, sections: tuple[int, int, int] = (8, 12, 12)) -> torch.Tensor:
    """Row (0 t, 1 h, 2 w) of each rotary frequency in the Preview's VideoRoPE: the first
    2 * sections[1] frequencies alternate h, w; the remaining sections[0] use t (the upstream code
    hard-codes [8, 12, 12], so the rotary dim must be 64)."""
    t, h, w = sections
    if h != w or t + h + w != num_freqs:
        raise ValueError(f"VideoRoPE sections {sections} do not split {num_freqs} frequencies")
    return torch.tensor([1 + (j % 2) if j < 2 * h else 0 for j in range(num_freqs)], dtype=torch.long)
