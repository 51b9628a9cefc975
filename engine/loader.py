"""Strict, streaming weight loading: model folder -> shards -> one tensor at a time -> parameters.

Flow: `checkpoint_files(folder)` finds `model.safetensors` or the shards named by
`model.safetensors.index.json`; `load_weights(model, folder)` walks them shard by shard, asks the
model's `weight_targets()` where each checkpoint key goes (a `WeightTarget`: destination tensor and
expected shape), reads the tensor straight into it (converting bf16/fp16/fp32 on disk to the
parameter's dtype) and finally checks that every expected key was loaded. Keys the model declares
ignorable (`ignore_checkpoint_key`, e.g. MTP layers) are skipped without reading them.
Unknown, missing, duplicated or mis-shaped tensors are `CheckpointError`s naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from engine.errors import CheckpointError
from engine.safetensors_io import SafetensorsFile

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class WeightTarget:
    """Where one checkpoint tensor goes: `dest` is a parameter or a contiguous view of one."""

    dest: torch.Tensor
    shape: tuple[int, ...]


class LoadableModel(Protocol):
    def weight_targets(self) -> dict[str, WeightTarget]: ...

    def ignore_checkpoint_key(self, name: str) -> bool: ...


def checkpoint_files(folder: str | Path) -> dict[Path, list[str] | None]:
    """Map each weight file to the keys the index assigns to it (None: read the file's own header).

    Besides transformers' names, a folder may name its weights as diffusers does: a single
    `*.safetensors` file, or shards listed by one `*.safetensors.index.json`.
    """
    folder = Path(folder)
    index = folder / INDEX_NAME
    if not index.is_file():
        indexes = sorted(folder.glob("*.safetensors.index.json"))
        index = indexes[0] if len(indexes) == 1 else index
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
        files: dict[Path, list[str] | None] = {}
        for key, fname in weight_map.items():
            files.setdefault(folder / fname, []).append(key)  # type: ignore[union-attr]
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"{index} names {path.name}, which is missing from {folder}")
        return files
    if (folder / SINGLE_NAME).is_file():
        return {folder / SINGLE_NAME: None}
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(others) == 1:
        return {folder / others[0]: None}
    hint = f" (found {others} but no {INDEX_NAME})" if others else ""
    raise CheckpointError(f"no weights in {folder}: expected {SINGLE_NAME} or {INDEX_NAME}{hint}")


def iter_checkpoint(folder: str | Path) -> Iterator[tuple[str, SafetensorsFile]]:
    """Yield (key, open file) for every tensor, shard by shard, checking the index against headers."""
    for path, expected in checkpoint_files(folder).items():
        with SafetensorsFile(path) as f:
            if expected is not None:
                absent = sorted(set(expected) - set(f.tensors))
                if absent:
                    raise CheckpointError(
                        f"index assigns {absent[:5]} to {path.name}, which does not contain them"
                    )
            for name in f.tensors:
                yield name, f


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read a whole checkpoint into memory as stored (for converters and tests, not for serving)."""
    return {name: f.read(name) for name, f in iter_checkpoint(folder)}


def load_weights(model: LoadableModel, folder: str | Path) -> set[str]:
    """Load every tensor of the checkpoint into `model`; returns the set of loaded keys."""
    targets = model.weight_targets()
    loaded: set[str] = set()
    scratch = _Scratch()
    for name, f in iter_checkpoint(folder):
        if model.ignore_checkpoint_key(name):
            continue
        target = targets.get(name)
        if target is None:
            raise CheckpointError(
                f"unexpected tensor {name!r} in {f.path.name}: the model has no such weight"
            )
        if name in loaded:
            raise CheckpointError(f"tensor {name!r} appears twice in the checkpoint (again in {f.path.name})")
        info = f.tensors[name]
        if info.shape != target.shape:
            raise CheckpointError(
                f"tensor {name!r} in {f.path.name} has shape {list(info.shape)}, "
                f"expected {list(target.shape)}"
            )
        if info.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"tensor {name!r} has dtype {info.dtype}; expected a float dtype")
        _copy_into(f, name, target.dest, scratch)
        loaded.add(name)
    missing = sorted(set(targets) - loaded)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint in {folder} lacks {len(missing)} tensors: {missing[:5]}{more}")
    return loaded


class _Scratch:
    """One reusable read buffer (grown to the largest tensor that needs a dtype or device change)."""

    def __init__(self) -> None:
        self.buf = torch.empty(0, dtype=torch.uint8)

    def view(self, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        if self.buf.numel() < nbytes:
            self.buf = torch.empty(nbytes, dtype=torch.uint8)
        return self.buf[:nbytes].view(dtype).view(shape)


def _copy_into(f: SafetensorsFile, name: str, dest: torch.Tensor, scratch: _Scratch) -> None:
    """Read straight into `dest` when possible, else through the scratch buffer and convert."""
    info = f.tensors[name]
    if dest.device.type == "cpu" and dest.dtype == info.dtype and dest.is_contiguous():
        f.read(name, out=dest)
        return
    with torch.no_grad():
        dest.copy_(f.read(name, out=scratch.view(info.nbytes, info.dtype, info.shape)).view(dest.shape))
