"""Write complete random-weight Ling and Ring checkpoints: Hugging Face folders in the upstream layout.
(LLaDA2's and Ming's writers live in bailing/demo/llada2.py and bailing/demo/ming.py; re-exported here.)

Flow: `LingDemoSpec` -> demo tokenizer (ids) -> config.json (+ overrides) -> generation_config.json,
tokenizer files (the family's chat template) and seeded random weights (sharded safetensors).
`write_demo_models` writes every `DEMO_MODELS` entry once per root, each guarded by a stamp, with its
model's writer and demo sizes (`MingDemoSpec` for the Ming Preview `ming`, `Ming2DemoSpec` for Ming 2.0
`ming2`, `LingDemoSpec` for the others).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bailing.demo.ling_config import (
    DEMO_MIN_NEW_TOKENS,
    REMOVE,
    UPSTREAM_TRANSFORMERS_VERSION,
    LingDemoSpec,
    apply_config_overrides,
    ling_config_dict,
    padded_vocab_size,
)
from bailing.demo.ling_weights import TensorSpec, ling_tensor_layout, random_ling_state_dict
from bailing.demo.llada2 import write_llada2_checkpoint
from bailing.demo.ming import MingDemoSpec, write_ming_checkpoint
from bailing.demo.ming2 import Ming2DemoSpec, write_ming2_checkpoint
from bailing.demo.safetensors_writer import write_safetensors_checkpoint
from bailing.demo.tokenizer import (
    BASE_EOS_TOKEN,
    BOS_TOKEN,
    CHAT_EOS_TOKEN,
    PAD_TOKEN,
    RING_EOS_TOKEN,
    demo_tokenizer,
    ling_chat_template,
    ring_chat_template,
    special_token_id,
    write_json,
    write_tokenizer_files,
)

__all__ = [
    "DEMO_MODELS",
    "REMOVE",
    "STAMP_FILE",
    "WRITER_VERSION",
    "DemoModel",
    "LingDemoSpec",
    "Ming2DemoSpec",
    "MingDemoSpec",
    "TensorSpec",
    "ling_config_dict",
    "ling_tensor_layout",
    "random_ling_state_dict",
    "write_demo_models",
    "write_ling_checkpoint",
    "write_llada2_checkpoint",
    "write_ming2_checkpoint",
    "write_ming_checkpoint",
    "write_ring_checkpoint",
    "write_safetensors_checkpoint",
]

# Bump whenever the bytes written for the same spec change (corpus, template, init, layout).
WRITER_VERSION = 3  # 2: Ming with image-generation heads; 3: their files written quietly
STAMP_FILE = "bailing_demo.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _dtype_name(dtype: torch.dtype) -> str:
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, got {dtype!r}")
    return str(dtype).removeprefix("torch.")


def _generation_config(bos: int, eos: list[int], pad: int) -> dict[str, Any]:
    """generation_config.json in the upstream chat form (stop on end-of-text or end-of-turn), plus the
    demo's `min_new_tokens`."""
    return {
        "_from_model_config": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "min_new_tokens": DEMO_MIN_NEW_TOKENS,
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
    return _write_checkpoint(
        out_dir, spec, ling_chat_template(), CHAT_EOS_TOKEN, seed=seed, dtype=dtype,
        max_shard_bytes=max_shard_bytes, with_tokenizer=with_tokenizer, config_overrides=config_overrides,
    )  # fmt: skip


def write_ring_checkpoint(
    out_dir: str | Path,
    spec: LingDemoSpec = LingDemoSpec(),  # noqa: B008 (frozen dataclass: safe default)
    *,
    seed: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int | None = 2_000_000,
    with_tokenizer: bool = True,
    config_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a random-weight Ring 2.0 checkpoint folder to `out_dir` and return its path.

    Ring is Ling's architecture with another chat template (Ring-mini-2.0's: the generation prompt
    opens `<think>\\n`) and `<|endoftext|>` as the tokenizer's eos; configs and weights are built as
    in `write_ling_checkpoint` (the default seed differs, so the demo weights do too).
    """
    return _write_checkpoint(
        out_dir, spec, ring_chat_template(), RING_EOS_TOKEN, seed=seed, dtype=dtype,
        max_shard_bytes=max_shard_bytes, with_tokenizer=with_tokenizer, config_overrides=config_overrides,
    )  # fmt: skip


def _write_checkpoint(
    out_dir: str | Path,
    spec: LingDemoSpec,
    chat_template: str,
    eos_token: str,
    *,
    seed: int,
    dtype: torch.dtype,
    max_shard_bytes: int | None,
    with_tokenizer: bool,
    config_overrides: dict[str, Any] | None,
) -> Path:
    """The body of the family writers: `chat_template` and `eos_token` go to tokenizer_config.json."""
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
        write_tokenizer_files(out, tokenizer, chat_template, eos_token=eos_token, model_max_length=max_len)
    else:
        for name in _TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)
    write_json(out / "config.json", config)
    chat_eos = [eos, special_token_id(tokenizer, CHAT_EOS_TOKEN)]
    write_json(out / "generation_config.json", _generation_config(bos, chat_eos, pad))
    write_safetensors_checkpoint(out, state_dict, dtype=dtype, max_shard_bytes=max_shard_bytes)
    return out


@dataclass(frozen=True)
class DemoModel:
    """One checkpoint of `write_demo_models`: folder and served model `name`, worker `family`, seed."""

    name: str
    family: str
    seed: int


# The family is what the model's worker runs (`bailing worker --family`): `ming` (the Preview) and
# `ming2` (Ming-flash-omni 2.0: thinker, image heads and talker) are both served by the ming family.
DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel("ling", "ling", seed=0),
    DemoModel("ring", "ring", seed=1),
    DemoModel("llada2", "llada2", seed=2),
    DemoModel("ming", "ming", seed=3),
    DemoModel("ming2", "ming", seed=4),
)
# Each model's writer, by model name.
_WRITERS: dict[str, Callable[..., Path]] = {
    "ling": write_ling_checkpoint,
    "ring": write_ring_checkpoint,
    "llada2": write_llada2_checkpoint,
    "ming": write_ming_checkpoint,
    "ming2": write_ming2_checkpoint,
}
DemoSpec = LingDemoSpec | MingDemoSpec | Ming2DemoSpec
# The sizes each model's writer is given; a model not listed takes the Ling demo sizes.
_SPECS: dict[str, DemoSpec] = {"ming": MingDemoSpec(), "ming2": Ming2DemoSpec()}


def _model_spec(name: str) -> DemoSpec:
    return _SPECS.get(name, LingDemoSpec())


def _demo_stamp(model: DemoModel, spec: DemoSpec, dtype: torch.dtype) -> dict[str, Any]:
    """As written to and read back from the stamp file (JSON: a spec's tuples become lists)."""
    stamp = {
        "writer_version": WRITER_VERSION,
        "family": model.family,
        "seed": model.seed,
        "dtype": _dtype_name(dtype),
        "spec": dataclasses.asdict(spec),
    }
    return json.loads(json.dumps(stamp))


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


def _write_demo_folder(
    target: Path, stamp: dict[str, Any], spec: DemoSpec, write: Callable[..., Path]
) -> None:
    """Write into a temporary sibling and rename it into place, so `target` is never half-written."""
    if target.exists() and not (target / STAMP_FILE).is_file():
        raise ValueError(f"{target} exists and is not a bailing demo checkpoint; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp, spec, seed=stamp["seed"], dtype=getattr(torch, stamp["dtype"]))
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        write_json(tmp / STAMP_FILE, {**stamp, "files": files})
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint folder is ordinary data
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_demo_models(root: str | Path, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Ensure `root/<name>` holds each demo checkpoint (or those in `names`); returns {name: path}.

    A folder stamped with the same writer version, family, seed and spec (the model's demo sizes,
    `_SPECS`) is kept as is; each folder is replaced atomically on its own. An unknown name
    raises ValueError listing the known ones.
    """
    root = Path(root)
    known = [model.name for model in DEMO_MODELS]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown demo model(s) {unknown}; the demo models are {known}")
    paths = {}
    for model in DEMO_MODELS:
        if names is not None and model.name not in names:
            continue
        spec = _model_spec(model.name)
        stamp = _demo_stamp(model, spec, dtype=torch.bfloat16)
        target = root / model.name
        if not _is_complete(target, stamp):
            _write_demo_folder(target, stamp, spec, _WRITERS[model.name])
        paths[model.name] = target
    return paths
