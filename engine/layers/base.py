"""Parameter helpers: weights are created empty (no random init) and filled by the loader.

Parameters are created on the `meta` device (no memory) and materialised by
`materialize(model, dtype, device)`, which allocates each one once in its final dtype (router weights
stay float32: `keep_fp32`) and moves the small computed buffers (rotary tables) to the device.
"""

from __future__ import annotations

import torch
from torch import nn


def param(*shape: int, keep_fp32: bool = False) -> nn.Parameter:
    """An uninitialised, frozen parameter; `keep_fp32` pins it to float32 whatever the model dtype."""
    p = nn.Parameter(torch.empty(*shape, device="meta"), requires_grad=False)
    p.keep_fp32 = keep_fp32  # type: ignore[attr-defined]
    return p


def materialize(model: nn.Module, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """Allocate every (meta) parameter for real: `dtype` unless it is marked keep_fp32."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            dt = torch.float32 if getattr(p, "keep_fp32", False) else dtype
            new = nn.Parameter(torch.empty(p.shape, dtype=dt, device=device), requires_grad=False)
            new.keep_fp32 = getattr(p, "keep_fp32", False)  # type: ignore[attr-defined]
            module._parameters[name] = new
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = buf.to(device)
    return model


class Linear(nn.Module):
    """y = x W^T (+ b); W is [out, in] as in every checkpoint."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = param(out_features, in_features)
        self.bias = param(out_features) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    """Token id -> row of `weight` [V, d]; no scaling."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = param(num_embeddings, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)
