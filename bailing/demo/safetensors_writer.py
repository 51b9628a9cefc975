"""Write a state dict as Hugging Face safetensors: one file, or shards plus an index.

Flow: {key: tensor} -> shard plan (by byte size in the target dtype) -> one shard at a time is cast,
saved with `safetensors.torch.save_file` and freed -> `model.safetensors.index.json` when sharded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_METADATA = {"format": "pt"}


def _nbytes(tensor: torch.Tensor, dtype: torch.dtype) -> int:
    return tensor.numel() * torch.empty((), dtype=dtype).element_size()


def plan_shards(sizes: dict[str, int], max_shard_bytes: int | None) -> list[list[str]]:
    """Group keys (in order) into shards of at most `max_shard_bytes` (a bigger tensor gets its own)."""
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be >= 1 or None, got {max_shard_bytes}")
    if max_shard_bytes is None or sum(sizes.values()) <= max_shard_bytes:
        return [list(sizes)]
    shards: list[list[str]] = [[]]
    used = 0
    for key, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def _remove_old_weights(out: Path) -> None:
    """Delete weight files of an earlier write, so no stale shard survives next to the new ones."""
    for path in [*out.glob("model*.safetensors"), out / INDEX_FILE]:
        if path.is_file():
            path.unlink()


def write_safetensors_checkpoint(
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int | None = None,
    keep_dtype: frozenset[str] = frozenset(),
) -> list[Path]:
    """Save `state_dict` cast to `dtype` into `out_dir`; returns the written files (index last).
    Keys in `keep_dtype` are written in their own dtype (FP8 weights and their float32 scales).

    Fits in `max_shard_bytes` (or it is None): a single `model.safetensors`. Otherwise shards
    `model-00001-of-0000N.safetensors` and `model.safetensors.index.json` with the HF layout
    `{"metadata": {"total_size": bytes}, "weight_map": {key: shard file}}`.
    """
    if not state_dict:
        raise ValueError("state_dict is empty")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_weights(out)

    def target(key: str) -> torch.dtype:
        return state_dict[key].dtype if key in keep_dtype else dtype

    sizes = {key: _nbytes(tensor, target(key)) for key, tensor in state_dict.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{n:05d}-of-{len(shards):05d}.safetensors" for n in range(1, len(shards) + 1)]
    )
    written = []
    for name, keys in zip(names, shards, strict=True):
        shard = {
            key: state_dict[key].detach().to(device="cpu", dtype=target(key)).contiguous() for key in keys
        }
        save_file(shard, str(out / name), metadata=_METADATA)
        (out / name).chmod(0o644)  # save_file creates 0600; weights are ordinary shared data
        del shard  # free this shard's cast copies before building the next one
        written.append(out / name)
    if len(shards) > 1:
        weight_map = {key: name for name, keys in zip(names, shards, strict=True) for key in keys}
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        written.append(out / INDEX_FILE)
    return written
