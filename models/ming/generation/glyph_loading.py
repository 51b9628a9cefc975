"""Loading the optional `byt5/` folder of a Ming 2.0 checkpoint into a `glyph.GlyphEncoder`, strictly.

Layout (upstream `load_byt5` + bizgen `load_byt5_and_byt5_tokenizer`): `byt5.json` {"byt5_config":
{"byt5_ckpt_path": the base ByT5 folder (its config.json gives the T5 shape), "special_token",
"color_special_token", "font_special_token", "font_ann_path", "color_ann_path", "multilingual", ...},
"byt5_mapper_config": {"num_layers", "sdxl_channels"}, "byt5_max_length"}; `byt5_model/byt5_model.pt`
(the encoder's state dict: what upstream loads last, strictly, over every encoder weight, so the base
folder's weights and `byt5_model/base.pt` never reach the output and are not read); and
`byt5_mapper/byt5_mapper.pt`. Both .pt files are plain tensor dicts, read with torch.load
(weights_only=True) as they ship; a missing, unexpected or mis-shaped key is a CheckpointError naming it.
The tokenizer is transformers' ByT5Tokenizer (bytes: it needs no vocabulary file) plus the font /
color tokens upstream adds when `special_token` is on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import ByT5Tokenizer, T5Config
from transformers.models.t5.modeling_t5 import T5Stack

from engine.errors import CheckpointError
from models.ming.generation.config import read_json
from models.ming.generation.glyph import ByT5Mapper, GlyphEncoder
from models.ming.generation.loading import build_empty, materialize_module

ENCODER_FILE = ("byt5_model", "byt5_model.pt")  # bizgen BYT5_CKPT_NAME
MAPPER_FILE = ("byt5_mapper", "byt5_mapper.pt")  # bizgen BYT5_MAPPER_CKPT_NAME
# byt5_config keys upstream's loader takes (any other one is a TypeError upstream).
_BYT5_KEYS = {
    "byt5_ckpt_path", "byt5_name", "special_token", "color_special_token", "font_special_token",
    "align_special_token", "train_text_encoder_lora", "text_encoder_lora_rank", "font_ann_path",
    "color_ann_path", "multilingual",
}  # fmt: skip
_MAPPER = {"num_layers", "sdxl_channels"}  # byt5_mapper_config keys
_FONT_PREFIXES = ("cn-", "en-", "jp-", "kr-")


@dataclass(frozen=True)
class GlyphConfig:
    """`byt5/byt5.json`, checked (upstream defaults filled in)."""

    max_length: int  # byt5_max_length: glyph tokens per request (T)
    base: str  # byt5_config.byt5_ckpt_path, relative to byt5/
    mapper_layers: int
    channels: int | None  # sdxl_channels: the mapper's output width (None: ByT5's d_model)
    special_tokens: bool
    color_tokens: bool
    font_tokens: bool
    multilingual: bool
    font_ann: str | None
    color_ann: str | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GlyphConfig:
        byt5, mapper = data.get("byt5_config"), data.get("byt5_mapper_config")
        if not isinstance(byt5, dict) or not isinstance(mapper, dict):
            raise ValueError("byt5_config and byt5_mapper_config must be JSON objects")
        for where, keys, known in (
            ("byt5_config", byt5, _BYT5_KEYS),
            ("byt5_mapper_config", mapper, _MAPPER),
        ):
            if unknown := sorted(set(keys) - known):
                raise ValueError(f"{where}.{unknown[0]} is not a key upstream's loader takes")
        if byt5.get("train_text_encoder_lora"):
            raise ValueError("byt5_config.train_text_encoder_lora is not supported (a training-only LoRA)")
        if not isinstance(byt5.get("byt5_ckpt_path"), str):
            raise ValueError("byt5_config.byt5_ckpt_path must name the base ByT5 folder")
        flags = {
            k: byt5.get(k, False) for k in ("special_token", "color_special_token", "font_special_token")
        }
        flags["multilingual"] = byt5.get("multilingual", True)
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"byt5_config.{key} must be true or false, got {value!r}")
        anns = {k: byt5.get(k) for k in ("font_ann_path", "color_ann_path")}
        for key, value in anns.items():
            if flags["special_token"] and not isinstance(value, str):
                raise ValueError(f"byt5_config.{key} must name a JSON file when special_token is on")
        return cls(
            _positive(data.get("byt5_max_length"), "byt5_max_length"), byt5["byt5_ckpt_path"],
            _positive(mapper.get("num_layers"), "byt5_mapper_config.num_layers", zero=True),
            None if mapper.get("sdxl_channels") is None
            else _positive(mapper["sdxl_channels"], "byt5_mapper_config.sdxl_channels"),
            flags["special_token"], flags["color_special_token"], flags["font_special_token"],
            flags["multilingual"], anns["font_ann_path"], anns["color_ann_path"],
        )  # fmt: skip


def _positive(value: object, name: str, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise ValueError(f"{name} must be a {'non-negative' if zero else 'positive'} integer, got {value!r}")
    return value


def load_glyph_encoder(
    folder: Path, condition_dim: int, device: torch.device, dtype: torch.dtype
) -> GlyphEncoder | None:
    """The checkpoint's glyph encoder, or None when it has no `byt5/` folder (upstream skips it)."""
    if not folder.is_dir():
        return None
    try:
        cfg = GlyphConfig.from_dict(read_json(folder / "byt5.json"))
    except ValueError as exc:
        raise CheckpointError(f"{folder}/byt5.json: {exc}") from None
    tokenizer = glyph_tokenizer(folder, cfg)
    t5 = t5_config(folder, cfg, len(tokenizer))
    width = t5.d_model if cfg.channels is None else cfg.channels
    if width != condition_dim:
        raise CheckpointError(
            f"{folder}/byt5.json: the glyph tokens are {width} wide (byt5_mapper_config.sdxl_channels), "
            f"but the condition they join is {condition_dim} (mlp/config.json diffusion_c_input_dim)"
        )
    encoder = materialize_module(build_empty(lambda: T5Stack(t5)), device, dtype)
    load_pt_strict(encoder, folder.joinpath(*ENCODER_FILE))
    mapper = build_empty(lambda: ByT5Mapper(t5, cfg.mapper_layers, cfg.channels))
    mapper = materialize_module(mapper, device, dtype)
    load_pt_strict(mapper, folder.joinpath(*MAPPER_FILE))
    return GlyphEncoder(tokenizer, encoder, mapper, cfg.max_length).eval()


def glyph_tokenizer(folder: Path, cfg: GlyphConfig) -> ByT5Tokenizer:
    """ByT5's byte tokenizer; with `special_token`, upstream's extra tokens in upstream's order: colors
    `<color-i>`, then fonts (`<cn-font-N>` ... by code prefix when multilingual, else `<font-i>`)."""
    tokenizer = ByT5Tokenizer()
    if not cfg.special_tokens:
        return tokenizer
    fonts = _read_ann(folder / cfg.font_ann, "font_ann_path")
    colors = _read_ann(folder / cfg.color_ann, "color_ann_path")
    extra = [f"<color-{i}>" for i in range(len(colors))] if cfg.color_tokens else []
    if cfg.font_tokens and cfg.multilingual:
        for code, idx in fonts.items():
            prefix = code[:3] if code[:3] in _FONT_PREFIXES else ""
            extra.append(f"<{prefix}font-{idx}>")
    elif cfg.font_tokens:
        extra += [f"<font-{i}>" for i in range(len(fonts))]
    tokenizer.add_tokens(extra, special_tokens=True)
    return tokenizer


def _read_ann(path: Path, key: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} (byt5_config.{key}): cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} (byt5_config.{key}) must hold a JSON object")
    return data


def t5_config(folder: Path, cfg: GlyphConfig, tokens: int) -> T5Config:
    """The base folder's T5 config as an encoder stack (eager attention, as upstream's T5 computes it);
    with `special_token`, the vocabulary grows to the tokenizer's size (upstream resizes the embedding)."""
    data = read_json(folder / cfg.base / "config.json")
    t5 = T5Config.from_dict(data)
    if cfg.special_tokens:
        t5.vocab_size = tokens
    t5.is_decoder, t5.use_cache, t5.is_encoder_decoder = False, False, False
    t5._attn_implementation = "eager"
    return t5


def load_pt_strict(module: nn.Module, path: Path) -> None:
    """Fill `module`'s parameters from a torch.save'd state dict; every key and shape must match."""
    where = f"{path.parent.parent.name}/{path.parent.name}/{path.name}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a missing file, or pickled objects that are not plain tensors
        raise CheckpointError(f"{where}: cannot read it as a tensor state dict ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where} must hold a dict of tensors")
    targets = module.state_dict(keep_vars=True)
    if missing := sorted(set(targets) - set(state)):
        raise CheckpointError(f"{where}: missing tensor {missing[0]} ({len(missing)} missing)")
    if unexpected := sorted(set(state) - set(targets)):
        raise CheckpointError(f"{where}: unexpected tensor {unexpected[0]} ({len(unexpected)} unexpected)")
    with torch.no_grad():
        for name, target in targets.items():
            if tuple(state[name].shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{where}: {name} has shape {tuple(state[name].shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(state[name])
