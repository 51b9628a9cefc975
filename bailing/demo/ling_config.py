"""Sizes of the tiny Ling demo model and the upstream-format config.json dict built from them.

Flow: `LingDemoSpec` (+ token ids from the demo tokenizer) -> `ling_config_dict` -> config.json,
optionally edited by `apply_config_overrides` (tests write variants of the same model this way).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

# The transformers version the upstream (remote-code) checkpoints are saved with in the golden data.
UPSTREAM_TRANSFORMERS_VERSION = "4.57.6"
VOCAB_PAD_MULTIPLE = 128


class _Remove:
    """Sentinel type of `REMOVE`."""

    def __repr__(self) -> str:
        return "REMOVE"


# Use as a value in `config_overrides` to delete a key (e.g. drop partial_rotary_factor).
REMOVE: Any = _Remove()


@dataclasses.dataclass(frozen=True)
class LingDemoSpec:
    """Sizes of a tiny BailingMoeV2 (Ling 2.0) model; defaults are the shipped demo model."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    num_experts: int = 16
    num_experts_per_tok: int = 4
    n_group: int = 4
    topk_group: int = 2
    moe_intermediate_size: int = 64
    num_shared_experts: int = 1
    first_k_dense_replace: int = 1
    partial_rotary_factor: float = 0.5
    rope_theta: float = 600000.0
    max_position_embeddings: int = 4096
    routed_scaling_factor: float = 2.5
    num_nextn_predict_layers: int = 0
    tokenizer_vocab_size: int = 2048

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name in _MAY_BE_ZERO else 1
            if field.type == "int" and (not isinstance(value, int) or value < minimum):
                raise ValueError(f"LingDemoSpec.{field.name} must be an int >= {minimum}, got {value!r}")
        _check_divides(self, "num_key_value_heads", "num_attention_heads")
        _check_divides(self, "n_group", "num_experts")
        if self.num_experts // self.n_group < 2:
            raise ValueError("LingDemoSpec.n_group must leave at least 2 experts per group")
        if self.topk_group > self.n_group:
            raise ValueError("LingDemoSpec.topk_group must be <= n_group")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError("LingDemoSpec.num_experts_per_tok must be <= num_experts")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError("LingDemoSpec.partial_rotary_factor must be in (0, 1]")
        if int(self.head_dim * self.partial_rotary_factor) % 2:
            raise ValueError("LingDemoSpec.partial_rotary_factor must give an even rotary dim")


_MAY_BE_ZERO = frozenset({"num_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"})


def _check_divides(spec: LingDemoSpec, divisor: str, dividend: str) -> None:
    if getattr(spec, dividend) % getattr(spec, divisor):
        raise ValueError(f"LingDemoSpec.{divisor} must divide {dividend}")


# The demo checkpoints' generation_config.json floor on generated tokens (transformers' min_new_tokens,
# which the pipeline honours): random weights would otherwise now and then put the end of the turn
# first, and a first `bailing chat` would print nothing. Upstream checkpoints have none.
DEMO_MIN_NEW_TOKENS = 8


def padded_vocab_size(tokenizer_size: int, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
    """Embedding rows for a tokenizer of `tokenizer_size` tokens: rounded up to `multiple`."""
    if tokenizer_size < 1:
        raise ValueError(f"tokenizer_size must be >= 1, got {tokenizer_size}")
    return -(-tokenizer_size // multiple) * multiple


# Fields every real Ling 2.0 config.json carries with the same value (spec sections 1 and 6).
_FIXED_FIELDS: dict[str, Any] = {
    "architectures": ["BailingMoeV2ForCausalLM"],
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config",
        "AutoModel": "modeling_bailing_moe_v2.BailingMoeV2Model",
        "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM",
    },
    "embedding_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "model_type": "bailing_moe",
    "moe_router_enable_expert_bias": True,
    "mtp_loss_scaling_factor": 0,
    "norm_topk_prob": True,
    "output_dropout": 0.0,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "router_dtype": "fp32",
    "score_function": "sigmoid",
    "tie_word_embeddings": False,
    "transformers_version": UPSTREAM_TRANSFORMERS_VERSION,
    "use_bias": False,
    "use_cache": True,
    "use_qk_norm": True,
    "use_qkv_bias": False,
    "use_rmsnorm": True,
}


def ling_config_dict(
    spec: LingDemoSpec,
    *,
    vocab_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    torch_dtype: str = "bfloat16",
) -> dict[str, Any]:
    """config.json of `spec` in the upstream Ling-mini-2.0 format (keys sorted, as HF saves them)."""
    for name, token_id in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
        if not 0 <= token_id < vocab_size:
            raise ValueError(f"{name} must be in [0, vocab_size={vocab_size}), got {token_id}")
    config = {
        **copy.deepcopy(_FIXED_FIELDS),  # nested lists/dicts must not be shared between calls
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "max_window_layers": spec.num_hidden_layers,
        "moe_shared_expert_intermediate_size": spec.moe_intermediate_size,
        "pad_token_id": pad_id,
        "torch_dtype": torch_dtype,
        "vocab_size": vocab_size,
    }
    sizes = dataclasses.asdict(spec)
    del sizes["tokenizer_vocab_size"]
    config.update(sizes)
    return dict(sorted(config.items()))


def apply_config_overrides(config: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `config` with `overrides` applied; a value of `REMOVE` deletes that key."""
    result = dict(config)
    for key, value in (overrides or {}).items():
        if not isinstance(key, str):
            raise ValueError(f"config_overrides keys must be strings, got {key!r}")
        if value is REMOVE:
            result.pop(key, None)
        else:
            result[key] = value
    return dict(sorted(result.items()))
