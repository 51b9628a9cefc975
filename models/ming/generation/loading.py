"""Strict loading of the generation parts: library modules (diffusers, transformers) built empty, then
filled by the engine's streaming loader.

Flow: `build_empty(factory)` constructs the module on the meta device (no random init, no memory: a
real Z-Image DiT is 6B parameters) -> `materialize_module` allocates every parameter and buffer in
its final dtype on the device -> `load_strict(module, folder)` reads the folder's safetensors (one
file or diffusers' index + shards) into them. A missing, unexpected or mis-shaped tensor is a
CheckpointError naming the key; keys a part declares unused (e.g. the connector's lm_head) are
skipped without being read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from engine.errors import CheckpointError
from engine.loader import WeightTarget, load_weights

M = TypeVar("M", bound=nn.Module)


class ModuleWeights:
    """Any module as the engine loader's `LoadableModel`: its state-dict names are the checkpoint keys
    (after `prefix`); `unused` names checkpoint keys that are known but not loaded."""

    def __init__(self, module: nn.Module, prefix: str = "", unused: Iterable[str] = ()) -> None:
        self.module, self.prefix, self.unused = module, prefix, frozenset(unused)

    def weight_targets(self) -> dict[str, WeightTarget]:
        state = self.module.state_dict(keep_vars=True)  # parameters and persistent buffers
        return {self.prefix + name: WeightTarget(t.data, tuple(t.shape)) for name, t in state.items()}

    def ignore_checkpoint_key(self, name: str) -> bool:
        return name in self.unused


def build_empty(factory: Callable[[], M]) -> M:
    """`factory()` on the meta device: shapes only, nothing allocated or initialised."""
    with torch.device("meta"):
        return factory()


def materialize_module(module: M, device: torch.device, dtype: torch.dtype) -> M:
    """Allocate every meta parameter and buffer (floats in `dtype`, others as they are) on `device`."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_meta:
                dt = dtype if p.is_floating_point() else p.dtype
                sub._parameters[name] = nn.Parameter(
                    torch.empty(p.shape, dtype=dt, device=device), requires_grad=False
                )
        for name, b in list(sub._buffers.items()):
            if b is not None and b.is_meta and name not in sub._non_persistent_buffers_set:
                dt = dtype if b.is_floating_point() else b.dtype
                sub._buffers[name] = torch.empty(b.shape, dtype=dt, device=device)
    return module.requires_grad_(False).eval()


def check_materialized(module: nn.Module, what: str) -> None:
    """Computed (non-persistent) buffers left on meta must have been rebuilt by the part's owner."""
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_meta:
            raise CheckpointError(f"{what}: {name} was never allocated (a computed buffer not rebuilt)")


def load_strict(module: M, folder: str | Path, unused: Iterable[str] = (), prefix: str = "") -> M:
    """Fill `module` from the safetensors in `folder`; every state-dict entry must be there."""
    folder = Path(folder)
    try:
        load_weights(ModuleWeights(module, prefix, unused), folder)
    except CheckpointError as exc:
        raise CheckpointError(f"{folder.name}/: {exc}") from None
    return module


def load_part(
    factory: Callable[[], M],
    folder: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    unused: Iterable[str] = (),
) -> M:
    """build_empty -> materialize_module -> load_strict, for one checkpoint subfolder."""
    module = load_strict(materialize_module(build_empty(factory), device, dtype), folder, unused)
    check_materialized(module, Path(folder).name)
    return module
