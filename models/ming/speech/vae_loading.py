"""Strict loading of a `talker/vae/` folder into `AudioVAE`.

Flow: `read_vae_config(folder)` parses `config.json` (bad values: CheckpointError naming the field) ->
`load_vae` builds the module empty on meta, materialises it in its final dtype, rebuilds the three
Qwen2 backbones' computed rotary tables, then the engine's streaming reader fills every state-dict
entry from `model.safetensors` (encoder included; the ISTFT window is a checkpoint buffer). A missing,
unexpected or mis-shaped key is a CheckpointError naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.errors import CheckpointError
from models.ming.generation.loading import build_empty, check_materialized, load_strict, materialize_module
from models.ming.speech.vae import AudioVAE
from models.ming.speech.vae_config import AudioVAEConfig


def read_vae_config(folder: str | Path) -> AudioVAEConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    try:
        return AudioVAEConfig.from_dict(data)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_vae(folder: str | Path, device: torch.device, dtype: torch.dtype) -> AudioVAE:
    """A `talker/vae/` folder -> AudioVAE in eval mode on `device`, floats in `dtype`."""
    folder = Path(folder)
    cfg = read_vae_config(folder)
    vae = materialize_module(build_empty(lambda: AudioVAE(cfg)), device, dtype)
    vae.rebuild_rotary(device)
    load_strict(vae, folder)
    check_materialized(vae, folder.name)
    return vae
