"""SwiGLU MLP with checkpoint names gate_proj / up_proj / down_proj (no biases).

Tensor parallel: gate/up split by output width, down by input width; `reduce=False` leaves the
output a per-rank partial sum for a caller that adds several partials before one all-reduce (the
MoE block: routed + shared experts).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.parallel.linear import ColumnParallelLinear, RowParallelLinear


class SwiGLUMLP(nn.Module):
    """y = down(silu(gate(x)) * up(x)); intermediate width may be 0 (then y = 0)."""

    def __init__(self, hidden_size: int, intermediate_size: int, reduce: bool = True) -> None:
        super().__init__()
        self.gate_proj = ColumnParallelLinear(hidden_size, intermediate_size)
        self.up_proj = ColumnParallelLinear(hidden_size, intermediate_size)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, reduce=reduce)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
