"""The AudioVAE decoder's linear upsample in time (upstream `StreamingLinearUpsample`): latent frames ->
P decoder frames each, as `nn.Upsample(scale_factor=P, mode="linear", align_corners=False)` over the
whole sequence, or chunk by chunk with one frame of lookahead and one of history.

Streaming: a chunk cannot be upsampled until the next one's first frame is known (its last outputs
interpolate towards it), so the first push returns nothing and each later push returns the previous
chunk; the last push also returns its own frames (clamped at the end, as the whole upsample is).
Each chunk is upsampled inside the window [previous chunk's last frame, chunk, next chunk's first
frame] and cut out, so the result is bit-equal to the whole upsample for P = 4.
Legend: B = batch, T = frames in, D = channels, P = scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def upsample_linear(x: torch.Tensor, scale: int) -> torch.Tensor:
    """x (B, T, D) -> (B, T*P, D), linear, align_corners=False (edges clamp)."""
    y = F.interpolate(
        x.transpose(1, 2), scale_factor=scale, mode="linear", align_corners=False
    )  # (B, D, T*P)
    return y.transpose(1, 2)


@dataclass
class UpsampleStream:
    """Between pushes: the chunk held back for lookahead, and the last frame before it."""

    held: torch.Tensor | None = None  # (B, T, D)
    history: torch.Tensor | None = None  # (B, 1, D)
    finished: bool = False


class StreamingUpsample:
    """The chunked upsample; no parameters (upstream's module has none in the checkpoint)."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def _window(
        self, chunk: torch.Tensor, history: torch.Tensor | None, lookahead: torch.Tensor | None
    ) -> torch.Tensor:
        """Upsample [history?, chunk, lookahead?] and keep the chunk's T*P frames."""
        parts = [p for p in (history, chunk, lookahead) if p is not None]
        up = upsample_linear(torch.cat(parts, dim=1), self.scale)  # (B, (T + context)*P, D)
        start = self.scale if history is not None else 0
        return up[:, start : start + chunk.shape[1] * self.scale]

    def push(self, x: torch.Tensor, state: UpsampleStream, last: bool) -> torch.Tensor:
        """x (B, T, D) -> the upsampled frames now complete (B, T'*P, D); T' = 0 on the first push."""
        if state.finished:
            raise RuntimeError("the upsample stream has already received its last chunk")
        out = x[:, :0]  # (B, 0, D)
        if state.held is None and last:  # a single chunk: the whole upsample
            state.finished = True
            return upsample_linear(x, self.scale) if x.shape[1] else out
        if x.shape[1] == 0 and not last:
            return out
        if state.held is not None:
            lookahead = x[:, :1] if x.shape[1] else None  # an empty last push: the held chunk ends the stream
            out = self._window(state.held, state.history, lookahead)
            state.history = state.held[:, -1:]
        state.held = x
        if last:
            state.finished = True
            if x.shape[1]:
                out = torch.cat([out, self._window(x, state.history, None)], dim=1)
        # contiguous, as upstream's concatenation leaves it: the backbone's matmuls round by layout
        return out.contiguous()
