"""Upstream Ming-flash-omni state-dict layouts (specs/ming_layout.md section 2: the Preview's, and
2.0's, which differs in `vision.*` and the width of `linear_proj.0`) and seeded random weights for them.

Flow: config.json dict -> `ming_tensor_layout` (key, shape, init kind per tensor: `vision.*`,
`audio.*`, `model.model.*` + `model.lm_head.weight`, `linear_proj.*`, `linear_proj_audio.*`)
-> `random_ming_state_dict` -> {key: float32 tensor}. The language model's keys are Ling's layout
under `model.` with `q_norm` / `k_norm` and two more routers per MoE layer (`image_gate`,
`audio_gate`); Whisper's `positional_embedding` holds sinusoids, as upstream's buffer does.
Legend: W = Whisper width (n_state), V = ViT width, m = spatial merge, d = LLM hidden, E = experts.
The release is read from `vision_config.model_type`: `qwen3_moe_vit` is 2.0, anything else the Preview.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from bailing.demo.ling_weights import TensorSpec, ling_tensor_layout, random_tensor

# The Preview ViT's merged output width is hard-coded upstream (`image_emb_dim`), whatever the config says.
PREVIEW_IMAGE_EMB_DIM = 8192
_EXTRA_ROUTERS = ("image_gate", "audio_gate")  # the MultiRouter's gates besides the text `gate`


def _int(section: dict[str, Any], where: str, key: str) -> int:
    """A positive int field of a config section; ValueError naming `where.key` otherwise."""
    value = section.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config field '{where}.{key}' must be an int >= 1, got {value!r}")
    return value


def _section(config: dict[str, Any], key: str, parent: str = "") -> dict[str, Any]:
    """The object `config[key]`; ValueError naming `parent.key` otherwise."""
    value = config.get(key)
    if not isinstance(value, dict):
        name = f"{parent}.{key}" if parent else key
        raise ValueError(f"config field '{name}' must be an object, got {value!r}")
    return value


def _linear(prefix: str, rows: int, cols: int, *, bias: bool = True) -> Iterator[TensorSpec]:
    yield TensorSpec(f"{prefix}.weight", (rows, cols), "linear")
    if bias:
        yield TensorSpec(f"{prefix}.bias", (rows,), "bias")


def _vision_layout(vision: dict[str, Any]) -> Iterator[TensorSpec]:
    """Qwen2.5-VL ViT (transformers' names): Conv3d patch embed, RMSNorm blocks, 2x2 merger -> 8192."""
    where = "vision_config"
    width, inner = _int(vision, where, "hidden_size"), _int(vision, where, "intermediate_size")
    patch, frames = _int(vision, where, "patch_size"), _int(vision, where, "temporal_patch_size")
    channels = _int(vision, where, "in_channels")
    merged = width * _int(vision, where, "spatial_merge_size") ** 2  # V·m²: one merged unit
    yield TensorSpec("vision.patch_embed.proj.weight", (width, channels, frames, patch, patch), "linear")
    for i in range(_int(vision, where, "depth")):
        block = f"vision.blocks.{i}"
        yield TensorSpec(f"{block}.norm1.weight", (width,), "norm")
        yield TensorSpec(f"{block}.norm2.weight", (width,), "norm")
        yield from _linear(f"{block}.attn.qkv", 3 * width, width)  # [Q | K | V]
        yield from _linear(f"{block}.attn.proj", width, width)
        yield from _linear(f"{block}.mlp.gate_proj", inner, width)
        yield from _linear(f"{block}.mlp.up_proj", inner, width)
        yield from _linear(f"{block}.mlp.down_proj", width, inner)
    yield TensorSpec("vision.merger.ln_q.weight", (width,), "norm")
    yield from _linear("vision.merger.mlp.0", merged, merged)
    yield from _linear("vision.merger.mlp.2", PREVIEW_IMAGE_EMB_DIM, merged)


def _vision3_layout(vision: dict[str, Any]) -> Iterator[TensorSpec]:
    """2.0's Qwen3-VL-MoE-style ViT (transformers' names): biased Conv3d patch embed, learned position
    table, LayerNorm blocks with a plain GELU MLP, the 2x2 merger and one deepstack merger per
    `deepstack_visual_indexes` entry (LayerNorm over the merged V·m² width)."""
    where = "vision_config"
    width, inner = _int(vision, where, "hidden_size"), _int(vision, where, "intermediate_size")
    patch, frames = _int(vision, where, "patch_size"), _int(vision, where, "temporal_patch_size")
    channels, out = _int(vision, where, "in_channels"), _int(vision, where, "out_hidden_size")
    merged = width * _int(vision, where, "spatial_merge_size") ** 2  # V·m²: one merged unit
    yield from _linear_conv3d("vision.patch_embed.proj", width, channels, frames, patch)
    positions = _int(vision, where, "num_position_embeddings")
    yield TensorSpec("vision.pos_embed.weight", (positions, width), "embedding")
    for i in range(_int(vision, where, "depth")):
        block = f"vision.blocks.{i}"
        yield from _layer_norm(f"{block}.norm1", width)
        yield from _layer_norm(f"{block}.norm2", width)
        yield from _linear(f"{block}.attn.qkv", 3 * width, width)  # [Q | K | V]
        yield from _linear(f"{block}.attn.proj", width, width)
        yield from _linear(f"{block}.mlp.linear_fc1", inner, width)
        yield from _linear(f"{block}.mlp.linear_fc2", width, inner)
    mergers = [("vision.merger", width)]
    mergers += [(f"vision.deepstack_merger_list.{j}", merged) for j in range(len(_deepstack(vision)))]
    for prefix, norm_width in mergers:  # the main merger normalises before the 2x2 grouping
        yield from _layer_norm(f"{prefix}.norm", norm_width)
        yield from _linear(f"{prefix}.linear_fc1", merged, merged)
        yield from _linear(f"{prefix}.linear_fc2", out, merged)


def _deepstack(vision: dict[str, Any]) -> list[int]:
    value = vision.get("deepstack_visual_indexes")
    if not isinstance(value, list) or not all(isinstance(i, int) for i in value):
        raise ValueError(
            f"config field 'vision_config.deepstack_visual_indexes' must be a list of ints, got {value!r}"
        )
    return value


def _linear_conv3d(prefix: str, rows: int, channels: int, frames: int, patch: int) -> Iterator[TensorSpec]:
    yield TensorSpec(f"{prefix}.weight", (rows, channels, frames, patch, patch), "linear")
    yield TensorSpec(f"{prefix}.bias", (rows,), "bias")


def is_ming2(config: dict[str, Any]) -> bool:
    """Whether config.json describes a 2.0 thinker (its `vision_config.model_type`)."""
    return _section(config, "vision_config").get("model_type") == "qwen3_moe_vit"


def _audio_layout(audio: dict[str, Any]) -> Iterator[TensorSpec]:
    """The Whisper encoder (openai-whisper's names; `attn.key` has no bias, LayerNorms have one)."""
    where = "audio_config.whisper_encoder_config"
    whisper = _section(audio, "whisper_encoder_config", "audio_config")
    width, mels = _int(whisper, where, "n_state"), _int(whisper, where, "n_mels")
    yield TensorSpec("audio.positional_embedding", (_int(whisper, where, "n_ctx"), width), "sinusoid")
    yield from _linear_conv("audio.conv1", width, mels, 3)
    yield from _linear_conv("audio.conv2", width, width, 3)
    for i in range(_int(whisper, where, "n_layer")):
        block = f"audio.blocks.{i}"
        yield from _linear(f"{block}.attn.query", width, width)
        yield from _linear(f"{block}.attn.key", width, width, bias=False)
        yield from _linear(f"{block}.attn.value", width, width)
        yield from _linear(f"{block}.attn.out", width, width)
        yield from _layer_norm(f"{block}.attn_ln", width)
        yield from _linear(f"{block}.mlp.0", 4 * width, width)
        yield from _linear(f"{block}.mlp.2", width, 4 * width)
        yield from _layer_norm(f"{block}.mlp_ln", width)
    yield from _layer_norm("audio.ln_post", width)


def _linear_conv(prefix: str, rows: int, cols: int, kernel: int) -> Iterator[TensorSpec]:
    """A Conv1d: weight [out, in, kernel], bias [out]."""
    yield TensorSpec(f"{prefix}.weight", (rows, cols, kernel), "linear")
    yield TensorSpec(f"{prefix}.bias", (rows,), "bias")


def _layer_norm(prefix: str, width: int) -> Iterator[TensorSpec]:
    yield TensorSpec(f"{prefix}.weight", (width,), "norm")
    yield TensorSpec(f"{prefix}.bias", (width,), "bias")


def _language_layout(llm: dict[str, Any]) -> Iterator[TensorSpec]:
    """Ling's BailingMoeV2 layout under `model.`: q_norm / k_norm, and after each MoE layer's text
    `gate` its `image_gate` and `audio_gate` (weight [E, d] and expert_bias [E] each)."""
    for spec in ling_tensor_layout(llm):
        key = "model." + spec.key.replace(".query_layernorm.", ".q_norm.").replace(
            ".key_layernorm.", ".k_norm."
        )
        yield spec._replace(key=key)
        if key.endswith(".mlp.gate.weight"):
            gate_shape = spec.shape  # (E, d)
        if key.endswith(".mlp.gate.expert_bias"):
            prefix = key.removesuffix("gate.expert_bias")
            for router in _EXTRA_ROUTERS:
                yield TensorSpec(f"{prefix}{router}.weight", gate_shape, "linear")
                yield TensorSpec(f"{prefix}{router}.expert_bias", spec.shape, "bias")


def _projector_layout(config: dict[str, Any], hidden: int) -> Iterator[TensorSpec]:
    """`linear_proj` (Linear image_emb_dim -> d, GELU, Linear; image_emb_dim is 8192 in the Preview,
    `out_hidden_size` in 2.0) and `linear_proj_audio` (Conv1d W -> d with the audio config's kernel,
    Transpose, GELU, Linear, Transpose)."""
    audio = _section(config, "audio_config")
    whisper = _section(audio, "whisper_encoder_config", "audio_config")
    width = _int(whisper, "audio_config.whisper_encoder_config", "n_state")
    kernel = _int({"ds_kernel_size": 3, **audio}, "audio_config", "ds_kernel_size")
    vision = _section(config, "vision_config")
    emb = _int(vision, "vision_config", "out_hidden_size") if is_ming2(config) else PREVIEW_IMAGE_EMB_DIM
    yield from _linear("linear_proj.0", hidden, emb)
    yield from _linear("linear_proj.2", hidden, hidden)
    yield from _linear_conv("linear_proj_audio.0", hidden, width, kernel)
    yield from _linear("linear_proj_audio.3", hidden, hidden)


def ming_tensor_layout(config: dict[str, Any]) -> list[TensorSpec]:
    """Every tensor a Ming thinker checkpoint (Preview or 2.0) with this config.json holds, in upstream order.

    The upstream LLM always builds q/k norms and expert biases, so `llm_config` flags that would
    turn them off in Ling are ignored here as they are upstream.
    """
    depth = config.get("mlp_depth", 2)
    if depth != 2:
        raise ValueError(f"config field 'mlp_depth' must be 2 (Linear, GELU, Linear), got {depth!r}")
    llm = {**_section(config, "llm_config"), "use_qk_norm": True, "moe_router_enable_expert_bias": True}
    llm.pop("num_nextn_predict_layers", None)  # the Ming LLM has no MTP layers
    hidden = _int(llm, "llm_config", "hidden_size")
    vision = _vision3_layout if is_ming2(config) else _vision_layout
    return [
        *vision(_section(config, "vision_config")),
        *_audio_layout(_section(config, "audio_config")),
        *_language_layout(llm),
        *_projector_layout(config, hidden),
    ]


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positions [length, channels]: sin of length x channels/2 geometric frequencies
    (1 down to 1/max_timescale), then cos of the same."""
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {channels}")
    half = channels // 2
    step = math.log(max_timescale) / max(half - 1, 1)
    frequencies = torch.exp(-step * torch.arange(half, dtype=torch.float32))  # (channels/2,)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * frequencies[None, :]  # (length, c/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (length, channels)


def random_ming_state_dict(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Seeded float32 weights for every key of `ming_tensor_layout(config)` (same config and seed,
    same tensors). The three routers of a layer are separate draws, so the MultiRouter's choice
    matters; expert biases are non-zero, as in trained checkpoints."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    state = {}
    for spec in ming_tensor_layout(config):
        if spec.init == "sinusoid":
            state[spec.key] = sinusoids(*spec.shape)
        else:
            state[spec.key] = random_tensor(spec, generator)
    return state
