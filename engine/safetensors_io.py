"""A streaming safetensors reader: header validation, then one tensor at a time with plain reads.

Why not `safetensors.safe_open`: it memory-maps the file, and every page it touches counts toward the
process's resident size until the file is closed, so loading a shard costs up to the shard's size on
top of the model. Here each tensor is read with `readinto` straight into its destination (or into a
buffer the size of that one tensor when a dtype conversion is needed), keeping the peak near the
model's own size. Flow: path -> `SafetensorsFile` (header, dtype/shape/offset checks) -> `read(name)`,
or `read_part(name, dim, start, length)` for a rank's slice (only its bytes are read).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


class SafetensorsFile:
    """One .safetensors file opened for sequential reads; raises CheckpointError on any inconsistency."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()/__exit__
        except OSError as exc:
            raise CheckpointError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            self.tensors = self._parse_header()
        except Exception:
            self._fh.close()
            raise

    def _fail(self, why: str) -> CheckpointError:
        return CheckpointError(f"corrupt safetensors file {self.path}: {why}")

    def _parse_header(self) -> dict[str, TensorInfo]:
        size = os.fstat(self._fh.fileno()).st_size
        raw = self._fh.read(8)
        if len(raw) < 8:
            raise self._fail(f"only {size} bytes, too short for a header (truncated?)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(_MAX_HEADER, size - 8):
            raise self._fail(f"header length {header_len} exceeds the file size {size} (truncated?)")
        try:
            header = json.loads(self._fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._fail(f"header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        header.pop("__metadata__", None)
        base = 8 + header_len
        infos = {name: self._tensor_info(name, entry, base) for name, entry in header.items()}
        end = max((i.start + i.nbytes for i in infos.values()), default=base)
        if end > size:
            raise self._fail(f"data ends at byte {end} but the file has {size} bytes (truncated)")
        return infos

    def _tensor_info(self, name: str, entry: object, base: int) -> TensorInfo:
        try:
            dtype = DTYPES[entry["dtype"]]  # type: ignore[index]
            shape = tuple(int(d) for d in entry["shape"])  # type: ignore[index]
            begin, end = (int(o) for o in entry["data_offsets"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            raise self._fail(f"bad header entry for tensor {name!r}: {entry!r}") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if begin < 0 or end - begin != nbytes:
            raise self._fail(f"tensor {name!r}: offsets {begin}..{end} do not hold {shape} {dtype}")
        return TensorInfo(name, dtype, shape, base + begin, nbytes)

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Read tensor `name`. With `out` (contiguous CPU, same dtype and numel) it is filled in place."""
        info = self.tensors[name]
        if out is None:
            out = torch.empty(info.shape, dtype=info.dtype)
        if info.nbytes:
            self._fh.seek(info.start)
            view = out.view(-1).view(torch.uint8) if out.dtype != torch.bool else out.view(torch.uint8)
            got = self._fh.readinto(memoryview(view.numpy()).cast("B"))
            if got != info.nbytes:
                raise self._fail(f"tensor {name!r}: read {got} of {info.nbytes} bytes (truncated)")
        return out.view(info.shape)

    def read_part(self, name: str, dim: int, start: int, length: int) -> torch.Tensor:
        """Rows start..start+length-1 along `dim` of tensor `name` (a tensor-parallel slice), reading
        only those bytes: one contiguous run per index of the dimensions before `dim`."""
        info = self.tensors[name]
        shape = info.shape
        if not 0 <= start <= start + length <= shape[dim]:
            raise ValueError(f"{name}: part {start}..{start + length} outside dim {dim} of size {shape[dim]}")
        outer, inner = math.prod(shape[:dim]), math.prod(shape[dim + 1 :])
        out = torch.empty((*shape[:dim], length, *shape[dim + 1 :]), dtype=info.dtype)
        flat = out.view(-1).view(torch.uint8)
        run, stride = length * inner * info.dtype.itemsize, shape[dim] * inner * info.dtype.itemsize
        skip = start * inner * info.dtype.itemsize
        buf = memoryview(flat.numpy()).cast("B")
        for o in range(outer if run else 0):
            self._fh.seek(info.start + o * stride + skip)
            got = self._fh.readinto(buf[o * run : (o + 1) * run])
            if got != run:
                raise self._fail(f"tensor {name!r}: read {got} of {run} bytes (truncated)")
        return out

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
