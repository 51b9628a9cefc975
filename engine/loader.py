"""Strict, streaming weight loading: model folder -> shards -> one tensor at a time -> parameters.

Flow: `checkpoint_files(folder)` finds `model.safetensors` or the shards named by
`model.safetensors.index.json`; `load_weights(model, folder)` walks them shard by shard, asks the
model's `weight_targets()` where each checkpoint key goes (a `WeightTarget`: destination tensor,
the checkpoint's shape and, on a tensor-parallel rank, the `Shard` of it this rank holds), reads
only those bytes straight into it (converting bf16/fp16/fp32 on disk to the parameter's dtype) and
finally checks that every expected key was loaded. A target without a destination is expected but
held by another rank (expert parallel): checked, never read. Keys the model declares ignorable
(`ignore_checkpoint_key`, e.g. MTP layers) are skipped without reading them.
Block-FP8 checkpoints (`engine.fp8`): an F8 `X.weight` is read with its `X.weight_scale_inv` (from
whichever shard holds it) and dequantised into the parameter's dtype; an F8 weight without its scale,
a scale without an F8 weight, or a scale of the wrong shape is an error, as is FP8 in a checkpoint
whose config.json does not declare it.
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
from engine.fp8 import SCALE_SUFFIX, Fp8Scheme, dequantize, scale_shape, scale_span
from engine.safetensors_io import SafetensorsFile

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FP8_DTYPES = (torch.float8_e4m3fn,)


@dataclass(frozen=True)
class Shard:
    """A rank's part of a checkpoint tensor: the (start, length) `ranges` along `dim`, concatenated."""

    dim: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def length(self) -> int:
        return sum(n for _, n in self.ranges)


@dataclass(frozen=True)
class WeightTarget:
    """Where one checkpoint tensor goes. `dest` is a parameter or a contiguous view of one (None:
    another rank holds it); `shape` is the checkpoint's full shape; `shard` the part `dest` holds."""

    dest: torch.Tensor | None
    shape: tuple[int, ...]
    shard: Shard | None = None
    owner: object = None  # the module holding dest (one that can keep FP8 weights marks itself)


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


class Checkpoint:
    """Every weight file of a folder, open at once: `where[key]` is the file holding `key`.

    Opening parses only headers; the index is checked against them and a key in two files is an error.
    """

    def __init__(self, folder: str | Path) -> None:
        self.files: list[SafetensorsFile] = []
        self.where: dict[str, SafetensorsFile] = {}
        try:
            for path, expected in checkpoint_files(folder).items():
                f = SafetensorsFile(path)
                self.files.append(f)
                if expected is not None:
                    absent = sorted(set(expected) - set(f.tensors))
                    if absent:
                        raise CheckpointError(
                            f"index assigns {absent[:5]} to {path.name}, which does not contain them"
                        )
                for name in f.tensors:
                    if name in self.where:
                        raise CheckpointError(
                            f"tensor {name!r} appears twice in the checkpoint (again in {path.name})"
                        )
                    self.where[name] = f
        except BaseException:
            self.close()
            raise

    def items(self) -> Iterator[tuple[str, SafetensorsFile]]:
        """(key, file) for every tensor, file by file in storage order (sequential reads)."""
        for f in self.files:
            for name in f.tensors:
                yield name, f

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_checkpoint(folder: str | Path) -> Iterator[tuple[str, SafetensorsFile]]:
    """Yield (key, open file) for every tensor, shard by shard, checking the index against headers."""
    with Checkpoint(folder) as ckpt:
        yield from ckpt.items()


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read a whole checkpoint into memory as stored (for converters and tests, not for serving)."""
    return {name: f.read(name) for name, f in iter_checkpoint(folder)}


def load_weights(model: LoadableModel, folder: str | Path, fp8: Fp8Scheme | None = None) -> set[str]:
    """Load every tensor of the checkpoint into `model`; returns the set of loaded keys (FP8 scales
    are not keys of their own: they are loaded with their weights)."""
    targets = model.weight_targets()
    loaded: set[str] = set()
    scratch = _Scratch()
    with Checkpoint(folder) as ckpt:
        for name, f in ckpt.items():
            if model.ignore_checkpoint_key(name):
                continue
            if name.endswith(SCALE_SUFFIX) and name not in targets:
                _check_scale_has_weight(ckpt, name, fp8)
                continue  # read together with its weight
            target = targets.get(name)
            if target is None:
                raise CheckpointError(
                    f"unexpected tensor {name!r} in {f.path.name}: the model has no such weight"
                )
            info = f.tensors[name]
            if info.shape != target.shape:
                raise CheckpointError(
                    f"tensor {name!r} in {f.path.name} has shape {list(info.shape)}, "
                    f"expected {list(target.shape)}"
                )
            scale = _fp8_scale(ckpt, name, fp8) if info.dtype in _FP8_DTYPES else None
            if scale is None and info.dtype not in _FLOAT_DTYPES:
                raise CheckpointError(f"tensor {name!r} has dtype {info.dtype}; expected a float dtype")
            if target.dest is not None:
                _fill(f, name, target, scratch, scale)
            loaded.add(name)
    missing = sorted(set(targets) - loaded)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint in {folder} lacks {len(missing)} tensors: {missing[:5]}{more}")
    return loaded


@dataclass(frozen=True)
class _Scale:
    """An FP8 weight's scale tensor: where it is and the checkpoint's block size."""

    file: SafetensorsFile
    name: str
    block: tuple[int, int]


def _check_scale_has_weight(ckpt: Checkpoint, scale: str, fp8: Fp8Scheme | None) -> None:
    if fp8 is None:
        raise CheckpointError(
            f"tensor {scale!r} is an FP8 scale but config.json has no quantization_config with "
            "quant_method 'fp8'"
        )
    weight = scale[: -len(SCALE_SUFFIX)]
    f = ckpt.where.get(weight)
    if f is None or f.tensors[weight].dtype not in _FP8_DTYPES:
        raise CheckpointError(f"unexpected tensor {scale!r}: there is no FP8 weight {weight!r} it scales")


def _fp8_scale(ckpt: Checkpoint, name: str, fp8: Fp8Scheme | None) -> _Scale:
    """The scale that dequantises FP8 weight `name`; every inconsistency is a CheckpointError."""
    if fp8 is None:
        raise CheckpointError(
            f"tensor {name!r} is FP8 but config.json has no quantization_config with quant_method 'fp8'"
        )
    key = name + SCALE_SUFFIX
    f = ckpt.where.get(key)
    if f is None:
        raise CheckpointError(f"FP8 tensor {name!r} has no {key!r} in the checkpoint")
    info, weight = f.tensors[key], ckpt.where[name].tensors[name]
    try:
        want = scale_shape(weight.shape, fp8.block)
    except ValueError as exc:
        raise CheckpointError(f"FP8 tensor {name!r}: {exc}") from None
    if info.shape != want or info.dtype not in _FLOAT_DTYPES:
        raise CheckpointError(
            f"{key!r} is {list(info.shape)} {info.dtype}; a {list(weight.shape)} weight in blocks of "
            f"{list(fp8.block)} needs a float {list(want)}"
        )
    return _Scale(f, key, fp8.block)


class _Scratch:
    """One reusable read buffer (grown to the largest tensor that needs a dtype or device change)."""

    def __init__(self) -> None:
        self.buf = torch.empty(0, dtype=torch.uint8)

    def view(self, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        if self.buf.numel() < nbytes:
            self.buf = torch.empty(nbytes, dtype=torch.uint8)
        return self.buf[:nbytes].view(dtype).view(shape)


def _fill(
    f: SafetensorsFile, name: str, target: WeightTarget, scratch: _Scratch, scale: _Scale | None
) -> None:
    """Read this rank's part of `name` into `target.dest` (dequantising FP8 with `scale`)."""
    info, dest = f.tensors[name], target.dest
    assert dest is not None
    shard = target.shard
    if shard is None and (scale is None or dest.dtype == info.dtype):
        if dest.device.type == "cpu" and dest.dtype == info.dtype and dest.is_contiguous():
            f.read(name, out=dest)
            return
        with torch.no_grad():
            dest.copy_(f.read(name, out=scratch.view(info.nbytes, info.dtype, info.shape)).view(dest.shape))
        return
    if shard is None:
        shard = Shard(0, ((0, info.shape[0]),))
    pos = 0
    for start, length in shard.ranges:
        part = f.read_part(name, shard.dim, start, length)
        if scale is not None and dest.dtype != part.dtype:  # an FP8 weight kept as FP8 is copied
            scale_part = scale.file.read_part(
                scale.name, shard.dim, *scale_span(start, length, scale.block[shard.dim])
            )
            origin = (start, 0) if shard.dim == 0 else (0, start)
            part = dequantize(part, scale_part, scale.block, origin, dest.dtype)
        with torch.no_grad():
            dest.narrow(shard.dim, pos, length).copy_(part)
        pos += length
