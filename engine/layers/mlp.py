"""SwiGLU MLP with checkpoint names gate_proj / up_proj / down_proj (no biases)."""

from __future__ import annotations

import torch
from torch import nn

from engine.layers.base import Linear


class SwiGLUMLP(nn.Module):
    """y = down(silu(gate(x)) * up(x)); intermediate width may be 0 (then y = 0)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size)
        self.up_proj = Linear(hidden_size, intermediate_size)
        self.down_proj = Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
