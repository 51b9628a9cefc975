"""A tiny `byt5/` glyph folder in Ming 2.0's upstream layout, written for the tests (no download).

`write_tiny_byt5(folder)` writes `byt5.json`; the base ByT5 folder (`google__byt5-small/`: a tiny T5
config.json, tokenizer_config.json, model.safetensors); `byt5_model/base.pt` (upstream's wrapped
{"state_dict": {"module.text_tower.encoder.*"}}) and `byt5_model/byt5_model.pt` (the encoder weights
upstream loads last); `byt5_mapper/byt5_mapper.pt`; the font and color index files. Every weight is
drawn from seeded generators in sorted-name order (no library init), so the folder is the same bytes
on every machine; the base weights are other draws than byt5_model.pt (they never reach the output).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5Stack

from models.ming.generation.glyph import ByT5Mapper
from tests.models.ming.gen_golden import writable_copy

BASE = "google__byt5-small"
MAX_LENGTH = 24
CHANNELS = 40  # the golden diffusion_c_input_dim
T5_CONFIG = {
    "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "tokenizer_class": "ByT5Tokenizer",
    "vocab_size": 384, "d_model": 16, "d_kv": 4, "d_ff": 24, "num_heads": 2, "num_layers": 2,
    "num_decoder_layers": 1, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
    "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": True, "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0, "initializer_factor": 1.0,
}  # fmt: skip
# The hub's byt5-small tokenizer settings, in a form every transformers version reads (bytes: no vocab).
TOKENIZER_CONFIG = {
    "tokenizer_class": "ByT5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
    "extra_ids": 125,
}  # fmt: skip
FONTS = {"cn-SimHei": 0, "en-Arial": 1, "Wingdings": 2}  # font_uni_10-lang_idx.json
COLORS = {"#d62728": 0, "#1f77b4": 1}  # color_idx.json
SPECIAL_TOKENS = len(FONTS) + len(COLORS)


def byt5_json(**changes) -> dict:
    byt5 = {
        "byt5_ckpt_path": f"./{BASE}", "byt5_name": "google/byt5-small", "special_token": True,
        "color_special_token": True, "font_special_token": True, "multilingual": True,
        "font_ann_path": "./font_uni_10-lang_idx.json", "color_ann_path": "./color_idx.json",
    }  # fmt: skip
    return {
        "byt5_config": byt5 | changes.pop("byt5_config", {}),
        "byt5_mapper_type": "T5EncoderBlockByT5Mapper",
        "byt5_mapper_config": {"num_layers": 2, "sdxl_channels": CHANNELS} | changes.pop("mapper", {}),
        "byt5_max_length": MAX_LENGTH,
        **changes,
    }


def seeded_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every state-dict entry drawn in sorted-name order: norm gains 1 + 0.1·N, biases 0.1·N, matrices
    and embeddings N / sqrt(fan-in) (tables N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in sorted(module.state_dict().items()):
        noise = torch.randn(t.shape, generator=g)
        if "layer_norm" in name:
            state[name] = 1 + 0.1 * noise
        elif name.endswith("bias"):
            state[name] = 0.1 * noise
        elif "embed" in name or "relative_attention_bias" in name:
            state[name] = noise
        else:
            state[name] = noise / math.sqrt(t.shape[-1])
    return state


def t5(vocab: int) -> T5Config:
    config = T5Config.from_dict(T5_CONFIG | {"vocab_size": vocab})
    config.is_decoder = config.use_cache = config.is_encoder_decoder = False
    return config


def write_tiny_byt5(folder: Path, seed: int = 0, **changes) -> Path:
    """The byt5/ folder (`changes` edit byt5.json, see `byt5_json`); returns it."""
    cfg = byt5_json(**changes)
    special = cfg["byt5_config"]["special_token"]
    vocab = T5_CONFIG["vocab_size"] + (SPECIAL_TOKENS if special else 0)
    base = folder / BASE
    for sub in (base, folder / "byt5_model", folder / "byt5_mapper"):
        sub.mkdir(parents=True, exist_ok=True)
    (folder / "byt5.json").write_text(json.dumps(cfg, indent=2))
    (folder / "font_uni_10-lang_idx.json").write_text(json.dumps(FONTS))
    (folder / "color_idx.json").write_text(json.dumps(COLORS))
    (base / "config.json").write_text(json.dumps(T5_CONFIG, indent=2))
    (base / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))

    encoder = seeded_state(T5Stack(t5(vocab)), seed)
    torch.save(encoder, folder / "byt5_model" / "byt5_model.pt")
    pretrained = seeded_state(T5Stack(t5(vocab)), seed + 1)  # base.pt: overwritten upstream
    wrapped = {f"module.text_tower.encoder.{k}": v for k, v in pretrained.items()}
    torch.save({"state_dict": wrapped, "step": 0}, folder / "byt5_model" / "base.pt")
    hub = seeded_state(T5Stack(t5(T5_CONFIG["vocab_size"])), seed + 2)  # the hub model's encoder
    hub_tensors = {f"encoder.{k}": v for k, v in hub.items()} | {"shared.weight": hub["embed_tokens.weight"]}
    save_file({k: v.clone().contiguous() for k, v in hub_tensors.items()}, base / "model.safetensors")

    mapper_cfg = cfg["byt5_mapper_config"]
    mapper = ByT5Mapper(t5(vocab), mapper_cfg["num_layers"], mapper_cfg.get("sdxl_channels"))
    torch.save(seeded_state(mapper, seed + 3), folder / "byt5_mapper" / "byt5_mapper.pt")
    return folder


def golden_with_byt5(dst: Path, **changes) -> Path:
    """The golden ming-gen-tiny checkpoint copied to `dst` with a tiny byt5/ folder added."""
    root = writable_copy(dst)
    write_tiny_byt5(root / "byt5", **changes)
    return root
