"""Test-side strict loading of Ming's encoder weights (until the full Ming model loads through the
engine loader): a checkpoint folder's `vision.`, `audio.`, `linear_proj.` and `linear_proj_audio.`
tensors -> `MingEncoders` (other prefixes are left for the
language model). Missing, unexpected or mis-shaped encoder tensors are `CheckpointError`s naming keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.errors import CheckpointError
from engine.loader import checkpoint_files
from models.ming.encoders import ENCODER_PREFIXES, MingEncoders


def encoder_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint whose key starts with an encoder prefix."""
    tensors: dict[str, torch.Tensor] = {}
    for path in checkpoint_files(folder):
        for key, value in load_file(path).items():
            if key.startswith(ENCODER_PREFIXES):
                tensors[key] = value
    return tensors


def load_encoder_state(encoders: MingEncoders, tensors: dict[str, torch.Tensor]) -> set[str]:
    """Copy `tensors` into `encoders`; every encoder key must be present exactly once with its shape."""
    own = encoders.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    missing = sorted(set(own) - set(tensors))
    if unexpected:
        raise CheckpointError(f"unexpected encoder tensors in the checkpoint: {unexpected[:10]}")
    if missing:
        raise CheckpointError(f"encoder tensors missing from the checkpoint: {missing[:10]}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{key}: checkpoint shape {tuple(value.shape)}, model {tuple(own[key].shape)}"
            )
    with torch.no_grad():
        for key, value in tensors.items():
            own[key].copy_(value.to(own[key].dtype))
    return set(tensors)


def load_encoder_weights(encoders: MingEncoders, folder: str | Path) -> set[str]:
    """Load the encoder subtrees of the checkpoint in `folder`; returns the loaded keys."""
    return load_encoder_state(encoders, encoder_tensors(folder))
