"""Write complete random-weight Ling checkpoints: a Hugging Face folder in the exact upstream layout.

Flow: `LingDemoSpec` -> demo tokenizer (ids) -> config.json (+ overrides) -> generation_config.json,
tokenizer files and seeded random weights (sharded safetensors). `write_demo_models` does this once
per root, guarded by a `bailing_demo.json` stamp.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bailing.demo.ling_config import (
    REMOVE,
    UPSTREAM_TRANSFORMERS_VERSION,
    LingDemoSpec,
    apply_config_overrides,
    ling_config_dict,
    padded_vocab_size,
)
from bailing.demo.ling_weights import TensorSpec, ling_tensor_layout, random_ling_state_dict
from bailing.demo.safetensors_writer import write_safetensors_checkpoint
from bailing.demo.tokenizer import (
    BASE_EOS_TOKEN,
    BOS_TOKEN,
    CHAT_EOS_TOKEN,
    PAD_TOKEN,
    demo_tokenizer,
    ling_chat_template,
    special_token_id,
    write_json,
    write_tokenizer_files,
)

__all__ = [
    "REMOVE",
    "STAMP_FILE",
    "WRITER_VERSION",
    "LingDemoSpec",
    "TensorSpec",
    "ling_config_dict",
    "ling_tensor_layout",
    "random_ling_state_dict",
    "write_demo_models",
    "write_ling_checkpoint",
    "write_safetensors_checkpoint",
]

# Bump whenever the bytes written for the same spec change (corpus, template, init, layout).
WRITER_VERSION = 1
STAMP_FILE = "bailing_demo.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _dtype_name(dtype: torch.dtype) -> str:
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, got {dtype!r}")
    return str(dtype).removeprefix("torch.")


def _generation_config(bos: int, eos: list[int], pad: int) -> dict[str, Any]:
    """generation_config.json in the upstream chat form (stop on end-of-text or end-of-turn)."""
    return {
        "_from_model_config": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "transformers_version": UPSTREAM_TRANSFORMERS_VERSION,
    }


def write_ling_checkpoint(
    out_dir: str | Path,
    spec: LingDemoSpec = LingDemoSpec(),  # noqa: B008 (frozen dataclass: safe default)
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int | None = 2_000_000,
    with_tokenizer: bool = True,
    config_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a random-weight Ling 2.0 checkpoint folder to `out_dir` and return its path.

    Token ids in the configs are read from the demo tokenizer. `config_overrides` are applied to
    config.json before the weights are laid out, so the weights always match the written config.
    """
    if not isinstance(spec, LingDemoSpec):
        raise ValueError(f"spec must be a LingDemoSpec, got {type(spec).__name__}")
    tokenizer = demo_tokenizer(spec.tokenizer_vocab_size)
    bos, pad = special_token_id(tokenizer, BOS_TOKEN), special_token_id(tokenizer, PAD_TOKEN)
    eos = special_token_id(tokenizer, BASE_EOS_TOKEN)
    config = ling_config_dict(
        spec,
        vocab_size=padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True)),
        bos_id=bos,
        eos_id=eos,
        pad_id=pad,
        torch_dtype=_dtype_name(dtype),
    )
    config = apply_config_overrides(config, config_overrides)
    state_dict = random_ling_state_dict(config, seed)  # validates the config before any file is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if with_tokenizer:
        max_len = config.get("max_position_embeddings") or spec.max_position_embeddings
        write_tokenizer_files(
            out, tokenizer, ling_chat_template(), eos_token=CHAT_EOS_TOKEN, model_max_length=max_len
        )
    else:
        for name in _TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)
    write_json(out / "config.json", config)
    chat_eos = [eos, special_token_id(tokenizer, CHAT_EOS_TOKEN)]
    write_json(out / "generation_config.json", _generation_config(bos, chat_eos, pad))
    write_safetensors_checkpoint(out, state_dict, dtype=dtype, max_shard_bytes=max_shard_bytes)
    return out


def _demo_stamp(spec: LingDemoSpec, seed: int, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "writer_version": WRITER_VERSION,
        "family": "ling",
        "seed": seed,
        "dtype": _dtype_name(dtype),
        "spec": dataclasses.asdict(spec),
    }


def _is_complete(folder: Path, stamp: dict[str, Any]) -> bool:
    """True if `folder` holds a finished demo checkpoint written with exactly `stamp`."""
    try:
        found = json.loads((folder / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(found, dict):
        return False
    files = found.pop("files", None)
    if found != stamp or not isinstance(files, list):
        return False
    return all((folder / name).is_file() for name in files)


def _write_demo_folder(target: Path, stamp: dict[str, Any], spec: LingDemoSpec) -> None:
    """Write into a temporary sibling and rename it into place, so `target` is never half-written."""
    if target.exists() and not (target / STAMP_FILE).is_file():
        raise ValueError(f"{target} exists and is not a bailing demo checkpoint; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_ling_checkpoint(tmp, spec, seed=stamp["seed"], dtype=getattr(torch, stamp["dtype"]))
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        write_json(tmp / STAMP_FILE, {**stamp, "files": files})
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint folder is ordinary data
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_demo_models(root: str | Path) -> dict[str, Path]:
    """Ensure `root/ling` holds the demo Ling checkpoint; returns {"ling": path}.

    An existing folder stamped with the same writer version and spec is kept as is.
    """
    root = Path(root)
    spec = LingDemoSpec()
    stamp = _demo_stamp(spec, seed=0, dtype=torch.bfloat16)
    target = root / "ling"
    if not _is_complete(target, stamp):
        _write_demo_folder(target, stamp, spec)
    return {"ling": target}
