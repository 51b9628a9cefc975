"""Upstream BailingMoeV2 state-dict layout (spec section 4) and seeded random weights for it.

Flow: config.json dict -> `ling_tensor_layout` (key, shape, init kind) -> `random_ling_state_dict`
-> {key: float32 tensor}. Init keeps activations O(1): linear std 1/sqrt(fan_in), norms ~1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

_REQUIRED = object()


class TensorSpec(NamedTuple):
    """One checkpoint tensor: its key, shape and how `random_ling_state_dict` initializes it."""

    key: str
    shape: tuple[int, ...]
    init: str  # "embedding" | "linear" | "norm" | "bias" (Ming's layout adds "sinusoid")


class _Dims(NamedTuple):
    """The sizes the layout needs, read and checked from a config dict."""

    vocab: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    experts: int
    moe_intermediate: int
    shared_width: int | None  # None: no shared expert
    layers: int
    dense_layers: int
    mtp_layers: int


def _field(config: dict[str, Any], name: str, default: Any = _REQUIRED, *, minimum: int = 1) -> Any:
    """An int field of `config`; ValueError naming it when missing or out of range."""
    value = config.get(name, default)
    if value is _REQUIRED:
        raise ValueError(f"config field {name!r} is missing")
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"config field {name!r} must be an int >= {minimum}, got {value!r}")
    return value


def _shared_width(config: dict[str, Any], moe_intermediate: int) -> int | None:
    shared = config.get("num_shared_experts")
    if shared is None:
        return None
    _field(config, "num_shared_experts", minimum=0)
    unit = config.get("moe_shared_expert_intermediate_size") or moe_intermediate
    if not isinstance(unit, int) or unit < 0:
        raise ValueError(f"config field 'moe_shared_expert_intermediate_size' must be an int, got {unit!r}")
    return unit * shared


def _dims(config: dict[str, Any]) -> _Dims:
    hidden = _field(config, "hidden_size")
    heads = _field(config, "num_attention_heads")
    head_dim = config.get("head_dim")
    if not head_dim:  # missing, 0 or None: upstream falls back to hidden / heads
        if hidden % heads:
            raise ValueError("config field 'head_dim' is unset and hidden_size is not divisible by heads")
        head_dim = hidden // heads
    head_dim = _field({"head_dim": head_dim}, "head_dim")
    moe_intermediate = _field(config, "moe_intermediate_size")
    return _Dims(
        vocab=_field(config, "vocab_size"),
        hidden=hidden,
        heads=heads,
        kv_heads=_field(config, "num_key_value_heads", heads),
        head_dim=head_dim,
        intermediate=_field(config, "intermediate_size"),
        experts=_field(config, "num_experts"),
        moe_intermediate=moe_intermediate,
        shared_width=_shared_width(config, moe_intermediate),
        layers=_field(config, "num_hidden_layers"),
        dense_layers=_field(config, "first_k_dense_replace", 0, minimum=0),
        mtp_layers=_field(config, "num_nextn_predict_layers", 0, minimum=0),
    )


def _mlp(prefix: str, width: int, hidden: int) -> Iterator[TensorSpec]:
    """A SwiGLU MLP: gate/up [width, hidden], down [hidden, width]."""
    yield TensorSpec(f"{prefix}.gate_proj.weight", (width, hidden), "linear")
    yield TensorSpec(f"{prefix}.up_proj.weight", (width, hidden), "linear")
    yield TensorSpec(f"{prefix}.down_proj.weight", (hidden, width), "linear")


def _attention(prefix: str, dims: _Dims, config: dict[str, Any]) -> Iterator[TensorSpec]:
    qkv_rows = (dims.heads + 2 * dims.kv_heads) * dims.head_dim  # [Q (H·D) | K (Hkv·D) | V (Hkv·D)]
    yield TensorSpec(f"{prefix}.query_key_value.weight", (qkv_rows, dims.hidden), "linear")
    if config.get("use_qkv_bias", False):
        yield TensorSpec(f"{prefix}.query_key_value.bias", (qkv_rows,), "bias")
    if config.get("use_qk_norm", True):
        yield TensorSpec(f"{prefix}.query_layernorm.weight", (dims.head_dim,), "norm")
        yield TensorSpec(f"{prefix}.key_layernorm.weight", (dims.head_dim,), "norm")
    yield TensorSpec(f"{prefix}.dense.weight", (dims.hidden, dims.heads * dims.head_dim), "linear")
    if config.get("use_bias", False):
        yield TensorSpec(f"{prefix}.dense.bias", (dims.hidden,), "bias")


def _moe(prefix: str, dims: _Dims, config: dict[str, Any]) -> Iterator[TensorSpec]:
    yield TensorSpec(f"{prefix}.gate.weight", (dims.experts, dims.hidden), "linear")
    if config.get("moe_router_enable_expert_bias", True) is not False:
        yield TensorSpec(f"{prefix}.gate.expert_bias", (dims.experts,), "bias")
    for e in range(dims.experts):
        yield from _mlp(f"{prefix}.experts.{e}", dims.moe_intermediate, dims.hidden)
    if dims.shared_width is not None:
        yield from _mlp(f"{prefix}.shared_experts", dims.shared_width, dims.hidden)


def _decoder_layer(i: int, dims: _Dims, config: dict[str, Any], *, mtp: bool) -> Iterator[TensorSpec]:
    prefix = f"model.layers.{i}"
    if mtp:  # MTP input: concat(enorm(emb), hnorm(h)) -> eh_proj
        yield TensorSpec(f"{prefix}.enorm.weight", (dims.hidden,), "norm")
        yield TensorSpec(f"{prefix}.hnorm.weight", (dims.hidden,), "norm")
        yield TensorSpec(f"{prefix}.eh_proj.weight", (dims.hidden, 2 * dims.hidden), "linear")
    yield TensorSpec(f"{prefix}.input_layernorm.weight", (dims.hidden,), "norm")
    yield from _attention(f"{prefix}.attention", dims, config)
    yield TensorSpec(f"{prefix}.post_attention_layernorm.weight", (dims.hidden,), "norm")
    if i < dims.dense_layers and not mtp:
        yield from _mlp(f"{prefix}.mlp", dims.intermediate, dims.hidden)
    else:
        yield from _moe(f"{prefix}.mlp", dims, config)
    if mtp:
        yield TensorSpec(f"{prefix}.final_layernorm.weight", (dims.hidden,), "norm")


def ling_tensor_layout(config: dict[str, Any]) -> list[TensorSpec]:
    """Every tensor a BailingMoeV2 checkpoint with this config.json holds, in module order."""
    dims = _dims(config)
    specs = [TensorSpec("model.word_embeddings.weight", (dims.vocab, dims.hidden), "embedding")]
    for i in range(dims.layers):
        specs.extend(_decoder_layer(i, dims, config, mtp=False))
    for i in range(dims.layers, dims.layers + dims.mtp_layers):  # Ling-V2 MTP placement
        specs.extend(_decoder_layer(i, dims, config, mtp=True))
    specs.append(TensorSpec("model.norm.weight", (dims.hidden,), "norm"))
    if not config.get("tie_word_embeddings", False):
        specs.append(TensorSpec("lm_head.weight", (dims.vocab, dims.hidden), "linear"))
    return specs


def random_tensor(spec: TensorSpec, generator: torch.Generator) -> torch.Tensor:
    """One seeded float32 tensor for `spec`; "linear" covers convolutions too (fan-in = all but dim 0)."""
    noise = torch.randn(spec.shape, generator=generator, dtype=torch.float32)
    if spec.init == "embedding":
        return noise
    if spec.init == "norm":
        return 1.0 + 0.1 * noise
    if spec.init == "bias":
        return 0.1 * noise
    fan_in = math.prod(spec.shape[1:])  # [out, in] -> in; [out, in, *kernel] -> in·kernel
    return noise / math.sqrt(fan_in) if fan_in else noise


def random_ling_state_dict(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random float32 weights for every key of `ling_tensor_layout(config)`.

    The same (config, seed) always gives the same tensors. expert_bias is non-zero so that the
    biased top-k selection differs from the weighting scores, as in trained checkpoints.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return {spec.key: random_tensor(spec, generator) for spec in ling_tensor_layout(config)}
