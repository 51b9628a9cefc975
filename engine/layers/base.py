"""Parameter helpers: weights are created empty (no random init) and filled by the loader.

Parameters are created on the `meta` device (no memory) and materialised by
`materialize(model, dtype, device)`, which allocates each one once in its final dtype (router weights
stay float32: `keep_fp32`) and moves the small computed buffers (rotary tables) to the device.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.fp8 import FP8_DTYPE, fp8_linear, scale_shape
from engine.int8 import int8_linear, int8_parameters
from engine.layers.matvec import linear


def param(*shape: int, keep_fp32: bool = False, dtype: torch.dtype | None = None) -> nn.Parameter:
    """An uninitialised, frozen parameter; `keep_fp32` pins it to float32 whatever the model dtype,
    `dtype` to that dtype (FP8 weights kept as stored, and their scales)."""
    p = nn.Parameter(torch.empty(*shape, device="meta"), requires_grad=False)
    p.keep_fp32 = keep_fp32  # type: ignore[attr-defined]
    p.fixed_dtype = dtype  # type: ignore[attr-defined]
    return p


def materialize(model: nn.Module, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """Allocate every (meta) parameter for real: `dtype` unless it is marked keep_fp32."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            dt = getattr(p, "fixed_dtype", None) or (
                torch.float32 if getattr(p, "keep_fp32", False) else dtype
            )
            new = nn.Parameter(torch.empty(p.shape, dtype=dt, device=device), requires_grad=False)
            new.keep_fp32 = getattr(p, "keep_fp32", False)  # type: ignore[attr-defined]
            new.fixed_dtype = getattr(p, "fixed_dtype", None)  # type: ignore[attr-defined]
            module._parameters[name] = new
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = buf.to(device)
    return model


class Linear(nn.Module):
    """y = x W^T (+ b); W is [out, in] as in every checkpoint. After `keep_fp8(block)` (before
    materialising) W stays float8 as a block-FP8 checkpoint stores it, with `weight_scale_inv`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = param(out_features, in_features)
        self.bias = param(out_features) if bias else None
        self.fp8_block: tuple[int, int] | None = None
        self.int8 = False

    def keep_fp8(self, block: tuple[int, int]) -> None:
        o, i = self.weight.shape
        self.weight = param(o, i, dtype=FP8_DTYPE)
        self.weight_scale_inv = param(*scale_shape((o, i), block), dtype=torch.float32)
        self.fp8_block = block

    def quantize_int8(self) -> None:
        """After loading: hold W as int8 with a float32 scale per output row (engine.int8)."""
        self.weight, self.weight_scale = int8_parameters(self.weight)
        self.int8 = True

    def project(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x W^T (+ bias), whichever way W is held."""
        if self.int8:
            return int8_linear(x, self.weight, self.weight_scale, bias)
        if self.fp8_block is not None:
            return fp8_linear(x, self.weight, self.weight_scale_inv, self.fp8_block, bias)
        return linear(x, self.weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x, self.bias)


class Embedding(nn.Module):
    """Token id -> row of `weight` [V, d]; no scaling."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = param(num_embeddings, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)
