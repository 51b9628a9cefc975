"""Strict loading of a `talker/` folder into `BailingTalker2`, and its tokenizer (`talker/llm/`).

Flow: `read_talker_config(folder)` parses `config.json` + `llm/config.json` -> `load_talker` builds the
module empty on meta, materialises it in its final dtype, rebuilds the backbone's computed rotary
table, then the engine's streaming reader fills every state-dict entry from `model.safetensors` (a
missing, unexpected or mis-shaped key is a CheckpointError naming it). The DiT/aggregator `inv_freq`
buffers are checkpoint tensors; they are checked against the RoPE they must describe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.errors import CheckpointError
from engine.tokenizer import load_tokenizer
from models.ming.generation.loading import build_empty, check_materialized, load_strict, materialize_module
from models.ming.speech.dit_layers import rope_inv_freq
from models.ming.speech.talker import BailingTalker2
from models.ming.speech.talker_config import TalkerConfig, backbone_config

ROTARY_KEYS = ("cfm.model.rotary_embed.inv_freq", "aggregator.rotary_embed.inv_freq")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_talker_config(folder: str | Path) -> tuple[TalkerConfig, dict[str, Any]]:
    """(TalkerConfig, the backbone's config dict) of a `talker/` folder."""
    folder = Path(folder)
    talker, llm = _read_json(folder / "config.json"), _read_json(folder / "llm" / "config.json")
    try:
        return TalkerConfig.from_dicts(talker, llm), llm
    except ValueError as exc:
        raise CheckpointError(f"{folder}/config.json: {exc}") from None


def _check_rotary(talker: BailingTalker2) -> None:
    state = talker.state_dict()
    for key in ROTARY_KEYS:
        loaded = state[key].float()
        expected = rope_inv_freq(2 * loaded.shape[0]).to(loaded.device)
        if not torch.allclose(loaded, expected, rtol=1e-2, atol=0.0):
            raise CheckpointError(f"{key} does not hold 1/10000^(2i/d): not the RoPE this talker implements")


def load_talker(folder: str | Path, device: torch.device, dtype: torch.dtype) -> BailingTalker2:
    """A `talker/` folder -> BailingTalker2 in eval mode on `device`, floats in `dtype`."""
    folder = Path(folder)
    cfg, llm = read_talker_config(folder)
    backbone = backbone_config(llm)
    talker = materialize_module(build_empty(lambda: BailingTalker2(cfg, backbone)), device, dtype)
    talker.rebuild_rotary(device)
    load_strict(talker, folder)
    check_materialized(talker, folder.name)
    _check_rotary(talker)
    return talker


def load_talker_tokenizer(folder: str | Path) -> Any:
    """The backbone's tokenizer (`talker/llm/tokenizer.json`); required: prompts are built from text."""
    llm = Path(folder) / "llm"
    tokenizer = load_tokenizer(llm)
    if tokenizer is None:
        raise CheckpointError(f"{llm} has no tokenizer.json: the talker builds its prompt from text")
    return tokenizer
