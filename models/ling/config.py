"""BailingMoeV2 config.json -> one frozen dataclass, and from it the engine's layer configs.

A key missing from config.json takes the official config class's default (`OFFICIAL_DEFAULTS`).
Follows the official HF code where it reads a key, and honours the keys it ignores but vLLM reads
(`score_function`, `norm_topk_prob`, `moe_shared_expert_intermediate_size`, `rotary_dim`,
`moe_router_enable_expert_bias`), so config variants in the wild load correctly. Invalid values raise
ValueError naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config import AttentionConfig, MoEConfig, RopeConfig

# Defaults of the official BailingMoeV2Config: what the HF code uses when config.json omits a key.
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "vocab_size": 157184,
    "hidden_size": 2048,
    "intermediate_size": 5120,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "hidden_act": "silu",
    "use_qkv_bias": False,
    "use_bias": False,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32768,
    "rope_theta": 600000.0,
    "rope_scaling": None,
    "num_experts": 256,
    "num_shared_experts": 1,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "moe_intermediate_size": 512,
    "first_k_dense_replace": 1,
    "use_qk_norm": True,
    "routed_scaling_factor": 1.0,
    "num_nextn_predict_layers": 0,
    "pad_token_id": 156892,
    "eos_token_id": 156892,
}


def _opt_int(d: dict[str, Any], key: str) -> int | None:
    v = d.get(key)
    return None if v is None else int(v)


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),)


@dataclass(frozen=True)
class BailingMoeV2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rotary_dim: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    rms_norm_eps: float
    use_qkv_bias: bool
    use_bias: bool
    use_qk_norm: bool
    tie_word_embeddings: bool
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int | None
    n_group: int
    topk_group: int
    first_k_dense_replace: int
    score_function: str
    norm_topk_prob: bool
    routed_scaling_factor: float
    expert_bias: bool
    num_nextn_predict_layers: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    pad_token_id: int | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BailingMoeV2Config:
        try:
            return cls._from_dict(d)
        except KeyError as exc:
            raise ValueError(f"config.json lacks the required field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(f"config.json has a value of the wrong type: {exc}") from None

    @classmethod
    def _from_dict(cls, raw: dict[str, Any]) -> BailingMoeV2Config:
        d = {**OFFICIAL_DEFAULTS, **raw}
        _check_numbers(d)
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json field 'hidden_act' must be 'silu', got {d['hidden_act']!r}")
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        head_dim = int(d["head_dim"] or 0) or hidden // heads  # 0 / null: hidden / heads
        num_shared = d["num_shared_experts"]
        shared_unit = int(d.get("moe_shared_expert_intermediate_size") or d["moe_intermediate_size"])
        n_group = int(d["n_group"] or 0)
        cfg = cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(d["num_key_value_heads"] or heads),
            head_dim=head_dim,
            rotary_dim=_rotary_dim(d, head_dim),
            rope_theta=float(d["rope_theta"]),
            rope_scaling=d["rope_scaling"],
            max_position_embeddings=int(d["max_position_embeddings"]),
            rms_norm_eps=float(d["rms_norm_eps"]),
            use_qkv_bias=bool(d["use_qkv_bias"]),
            use_bias=bool(d["use_bias"]),
            use_qk_norm=bool(d["use_qk_norm"]),
            tie_word_embeddings=bool(d["tie_word_embeddings"]),
            num_experts=int(d["num_experts"]),
            num_experts_per_tok=int(d["num_experts_per_tok"]),
            moe_intermediate_size=int(d["moe_intermediate_size"]),
            shared_expert_intermediate_size=None if num_shared is None else shared_unit * int(num_shared),
            n_group=n_group if n_group > 1 else 1,
            topk_group=int(d["topk_group"] or 1) if n_group > 1 else 1,
            first_k_dense_replace=int(d["first_k_dense_replace"] or 0),
            score_function=str(d.get("score_function") or "sigmoid"),
            norm_topk_prob=bool(d.get("norm_topk_prob", True)),
            routed_scaling_factor=float(d["routed_scaling_factor"] or 1.0),
            expert_bias=d.get("moe_router_enable_expert_bias", True) is not False,
            num_nextn_predict_layers=int(d["num_nextn_predict_layers"] or 0),
            eos_token_ids=_ids(d["eos_token_id"]),
            bos_token_id=_opt_int(d, "bos_token_id"),
            pad_token_id=_opt_int(d, "pad_token_id"),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_experts",
            "moe_intermediate_size",
            "max_position_embeddings",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"config.json field {name!r} must be positive, got {getattr(self, name)}")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ValueError(
                f"config.json field 'first_k_dense_replace' must be in [0, num_hidden_layers], "
                f"got {self.first_k_dense_replace}"
            )
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ValueError(
                f"config.json field 'rope_scaling' must be an object or null, got {self.rope_scaling!r}"
            )
        self.attention_config()  # validates heads, rotary dims
        self.moe_config()  # validates routing fields

    def rope_config(self) -> RopeConfig:
        return RopeConfig(
            head_dim=self.head_dim,
            rotary_dim=self.rotary_dim,
            theta=self.rope_theta,
            max_position=self.max_position_embeddings,
            scaling=self.rope_scaling,
        )

    def attention_config(self) -> AttentionConfig:
        return AttentionConfig(
            hidden_size=self.hidden_size,
            num_heads=self.num_attention_heads,
            num_kv_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rope=self.rope_config(),
            qkv_bias=self.use_qkv_bias,
            out_bias=self.use_bias,
            qk_norm=self.use_qk_norm,
            norm_eps=self.rms_norm_eps,
        )

    def moe_config(self) -> MoEConfig:
        return MoEConfig(
            hidden_size=self.hidden_size,
            num_experts=self.num_experts,
            top_k=self.num_experts_per_tok,
            intermediate_size=self.moe_intermediate_size,
            score_function=self.score_function,
            expert_bias=self.expert_bias,
            n_group=self.n_group,
            topk_group=self.topk_group,
            norm_topk_prob=self.norm_topk_prob,
            routed_scaling_factor=self.routed_scaling_factor,
            shared_intermediate_size=self.shared_expert_intermediate_size,
        )


def _check_numbers(d: dict[str, Any]) -> None:
    """Numeric fields must hold numbers (null allowed where the official code accepts it)."""
    for key, default in OFFICIAL_DEFAULTS.items():
        v = d[key]
        numeric = isinstance(default, int | float) and not isinstance(default, bool) and key != "eos_token_id"
        if numeric and v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ValueError(f"config.json field {key!r} must be a number, got {v!r}")


def _rotary_dim(d: dict[str, Any], head_dim: int) -> int:
    """partial_rotary_factor wins (official code); else `rotary_dim` (Ling-1T style); else full RoPE."""
    factor = d.get("partial_rotary_factor")
    if factor is not None:
        if not 0 < float(factor) <= 1:
            raise ValueError(f"config.json field 'partial_rotary_factor' must be in (0, 1], got {factor}")
        return int(head_dim * float(factor))
    if d.get("rotary_dim"):
        return int(d["rotary_dim"])
    return head_dim
