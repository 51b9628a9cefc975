"""RMSNorm, Llama style: normalise in float32, cast back, then multiply by the weight.

In float32 the fused `F.rms_norm` computes the same thing in one op; `forward_native` is the twin.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from engine.layers.base import param


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = param(dim)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused op
        return self.forward_native(x)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)
