"""Engine-level config dataclasses: what each layer needs, independent of any model family.

Model families parse their config.json into these (see models/*/config.py); the engine never reads
config.json itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding over the first `rotary_dim` channels of each head (NeoX halves)."""

    head_dim: int
    rotary_dim: int
    theta: float
    max_position: int
    scaling: dict[str, Any] | None = None  # e.g. {"rope_type": "yarn", "factor": 4.0, ...}

    def __post_init__(self) -> None:
        if self.rotary_dim <= 0 or self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise ValueError(
                f"rotary_dim must be even and in (0, head_dim={self.head_dim}], got {self.rotary_dim}"
            )
        if self.theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.theta}")


@dataclass(frozen=True)
class AttentionConfig:
    """GQA attention with an optional per-head RMSNorm on q and k before RoPE."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: RopeConfig
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_kv_heads})"
            )


@dataclass(frozen=True)
class MoEConfig:
    """Routed experts (top-k of E, optionally group-limited) plus optional shared experts."""

    hidden_size: int
    num_experts: int
    top_k: int
    intermediate_size: int
    score_function: str = "sigmoid"  # "sigmoid" | "softmax"
    expert_bias: bool = True  # selection-only bias added to the scores
    n_group: int = 1  # 0 or 1: no grouping
    topk_group: int = 1
    norm_topk_prob: bool = True  # renormalise the selected weights (only when top_k > 1)
    routed_scaling_factor: float = 1.0
    shared_intermediate_size: int | None = None  # None: no shared expert; 0: a zero-width one
    router_fp32: bool = True

    def __post_init__(self) -> None:
        if self.score_function not in ("sigmoid", "softmax"):
            raise ValueError(f"score_function must be 'sigmoid' or 'softmax', got {self.score_function!r}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok must be in [1, num_experts={self.num_experts}], got {self.top_k}"
            )
        if self.grouped:
            if self.num_experts % self.n_group:
                raise ValueError(f"n_group ({self.n_group}) must divide num_experts ({self.num_experts})")
            if not 1 <= self.topk_group <= self.n_group:
                raise ValueError(f"topk_group must be in [1, n_group={self.n_group}], got {self.topk_group}")
            if self.topk_group * (self.num_experts // self.n_group) < self.top_k:
                raise ValueError("topk_group * experts per group must be >= num_experts_per_tok")

    @property
    def grouped(self) -> bool:
        return self.n_group > 1


@dataclass(frozen=True)
class ModelRuntimeConfig:
    """What the engine needs to know about a loaded model to run it, whatever its family."""

    vocab_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_position: int
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
