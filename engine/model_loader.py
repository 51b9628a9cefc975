"""Model folder -> ready-to-run model: config.json -> registry -> build on meta -> materialise -> load
(block-FP8 checkpoints, declared by `quantization_config`, are dequantised into `dtype` as they load,
or on a GPU kept FP8 layer by layer: `keep_fp8_weights`).

Architectures are resolved through the `bailing.model_registries` entry point group, so the engine
names no model family. Every failure a user can cause becomes a CheckpointError naming the folder.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch

from engine.errors import CheckpointError
from engine.fp8 import FP8_DTYPE, fp8_scheme
from engine.int8 import quantize_model
from engine.layers.base import materialize
from engine.loader import Checkpoint, load_weights
from engine.model_base import CausalLM
from engine.parallel.group import SINGLE, TensorGroup, building

FP8_WEIGHTS_ENV = "BAILING_FP8_WEIGHTS"
CPU_DTYPE_ENV = "BAILING_CPU_DTYPE"  # the CPU default when no dtype is asked for (e.g. float32)
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def cpu_has_bf16_arithmetic() -> bool:
    """avx512_bf16 or AMX: bf16 products run in hardware (on an AMD EPYC here a 256-token prefill's
    bf16 GEMMs ran 3x fp32). Without them (e.g. an Intel Xeon with plain AVX-512) bf16 is emulated and
    slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device, quantization: str | None = None
) -> torch.dtype:
    """None/"auto": bfloat16 on a GPU; on a CPU $BAILING_CPU_DTYPE if set, else float32 with int8
    weights (their compiled decode step converts int8 to fp32 fastest: 4.9 against 6.1 ms/token with
    bf16 on the bench model), else bfloat16 where the CPU has bf16 arithmetic and float32 (the
    correctness reference) where it has not."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type != "cpu":
            return torch.bfloat16
        preset = os.environ.get(CPU_DTYPE_ENV, "").strip().lower()
        if preset and preset != "auto":
            return _named_dtype(preset, f"${CPU_DTYPE_ENV}")
        if quantization == "int8":
            return torch.float32
        return torch.bfloat16 if cpu_has_bf16_arithmetic() else torch.float32
    return _named_dtype(dtype, "dtype")


def _named_dtype(name: str, what: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown {what} {name!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return config


def resolve_architecture(config: dict[str, Any], folder: Path) -> type[CausalLM]:
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise CheckpointError(f"{folder}/config.json has no 'architectures' list naming the model class")
    known: list[str] = []
    for ep in entry_points(group="bailing.model_registries"):
        registry = ep.load()
        cls = registry(archs[0])
        if cls is not None:
            return cls
        known += getattr(__import__(ep.module, fromlist=["_"]), "supported_architectures", lambda: [])()
    raise CheckpointError(f"unknown architecture {archs[0]!r} in {folder}/config.json; supported: {known}")


def load_model(
    folder: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    group: TensorGroup = SINGLE,
    quantization: str | None = None,
) -> CausalLM:
    """Build, materialise and load the model; under a multi-rank `group`, only this rank's share;
    `quantization="int8"`: then its linears and experts hold int8 weights (engine.int8)."""
    folder = Path(folder)
    config = read_config(folder)
    cls = resolve_architecture(config, folder)
    try:
        with building(group):
            model = cls.from_config_dict(config)
        fp8 = fp8_scheme(config)
    except ValueError as exc:
        raise CheckpointError(f"{folder}/config.json: {exc}") from None
    if fp8 is not None and keep_fp8_weights(device):
        keep_fp8_where_stored(model, folder, fp8.block)
    materialize(model, dtype, device)
    load_weights(model, folder, fp8)
    if quantization == "int8":
        quantize_model(model)
    elif quantization is not None:
        raise ValueError(f"unknown quantization {quantization!r} (supported: int8)")
    return model.eval()


def keep_fp8_weights(device: torch.device) -> bool:
    """Keep a block-FP8 checkpoint's weights as FP8 (`$BAILING_FP8_WEIGHTS`: keep | dequantize | auto;
    auto keeps them on a GPU, where they halve the memory and the FP8 GEMM reads them, and
    dequantises them at load on a CPU, where a dequantise per product would cost more than it saves)."""
    mode = os.environ.get(FP8_WEIGHTS_ENV, "auto")
    if mode not in ("auto", "keep", "dequantize"):
        raise CheckpointError(f"${FP8_WEIGHTS_ENV} must be auto, keep or dequantize, got {mode!r}")
    return mode == "keep" or (mode == "auto" and device.type == "cuda")


def keep_fp8_where_stored(model: CausalLM, folder: Path, block: tuple[int, int]) -> int:
    """Before materialising: every layer that holds a checkpoint weight stored as FP8 and can keep it
    (whole blocks on this rank) keeps it FP8 with its scales. Returns how many layers do."""
    with Checkpoint(folder) as ckpt:
        stored = {key for key, f in ckpt.where.items() if f.tensors[key].dtype == FP8_DTYPE}
    owners = {
        id(t.owner): t.owner
        for key, t in model.weight_targets().items()
        if key in stored and hasattr(t.owner, "keep_fp8")
    }
    kept = [o for o in owners.values() if o.fp8_aligned(block)]
    for owner in kept:
        owner.keep_fp8(block)
    return len(kept)


def generation_config(folder: Path) -> dict[str, Any]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}
