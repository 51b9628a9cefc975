"""Settings of the continuous talker `BailingTalker2`, read from `talker/config.json` (the flow DiT, the
aggregator, ODE steps, patch and history sizes) and `talker/llm/config.json` (the Qwen2 backbone).

Upstream (`configuration_bailing_talker.py`) is a bare PretrainedConfig whose `flowmodel` / `aggregator`
dicts become constructor kwargs; the latent width is hard-coded (`BailingTalker2.latent_dim = 64`).
Unknown keys are errors here (upstream swallows them in `**kwargs`), except the training-only ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from transformers import Qwen2Config

LATENT_DIM = 64  # upstream BailingTalker2.latent_dim
XVECTOR_DIM = 192  # CAM++ speaker embedding width (spk_head's input)
# Keys upstream accepts but that change nothing at inference: dropouts are off in eval, the attention
# backend is SDPA either way (no mask is ever passed in generation), DiT ignores `llm_input_dim`.
_INERT_KEYS = frozenset(
    {
        "dropout",
        "cfg_dropout_prob",
        "grad_checkpointing",
        "attn_backend",
        "attn_mask_enabled",
        "llm_input_dim",
    }
)
_ATTN_BACKENDS = ("torch", "flash_attn")


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class BlockStackConfig:
    """One `flowmodel` or `aggregator` dict: a stack of pre-norm DiT blocks (upstream defaults)."""

    in_channels: int = LATENT_DIM
    hidden_size: int = 1024
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    llm_cond_dim: int = 896  # DiT only (inert in the aggregator): width of the conditioning hidden
    qk_norm: str | None = None  # None | "rms_norm"
    pe_attn_head: int | None = None  # RoPE on the first n heads only; None: all heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @classmethod
    def from_dict(cls, where: str, data: Any, defaults: dict[str, Any]) -> BlockStackConfig:
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - _INERT_KEYS)
        if "spk_dim" in unknown:
            raise ValueError(
                f"{where}.spk_dim is not supported: upstream's sampler never passes a speaker token"
            )
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}")
        backend = data.get("attn_backend", "torch")
        if backend not in _ATTN_BACKENDS:
            raise ValueError(f"{where}.attn_backend must be one of {_ATTN_BACKENDS}, got {backend!r}")
        cfg = cls(**{**defaults, **{k: v for k, v in data.items() if k in known}})
        cfg._validate(where)
        return cfg

    def _validate(self, where: str) -> None:
        for name in ("in_channels", "hidden_size", "depth", "num_heads", "llm_cond_dim"):
            _positive_int(f"{where}.{name}", getattr(self, name))
        if self.hidden_size % self.num_heads or self.head_dim % 2:
            raise ValueError(
                f"{where}.num_heads {self.num_heads} must divide hidden_size {self.hidden_size} "
                "into an even head width (RoPE rotates pairs)"
            )
        ratio = self.mlp_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
            raise ValueError(f"{where}.mlp_ratio must be a number, got {ratio!r}")
        if self.mlp_hidden <= 0:
            raise ValueError(f"{where}.mlp_ratio {ratio!r} gives an empty feed-forward layer")
        if self.qk_norm not in (None, "rms_norm"):
            raise ValueError(f"{where}.qk_norm must be null or 'rms_norm', got {self.qk_norm!r}")
        if self.pe_attn_head is not None:
            _positive_int(f"{where}.pe_attn_head", self.pe_attn_head)
            if self.pe_attn_head > self.num_heads:
                raise ValueError(
                    f"{where}.pe_attn_head {self.pe_attn_head} exceeds num_heads {self.num_heads}"
                )
        if self.in_channels != LATENT_DIM:
            raise ValueError(
                f"{where}.in_channels must be the latent width {LATENT_DIM}, got {self.in_channels}"
            )


# Upstream constructor defaults: DiT(hidden 1024, depth 28, heads 16), Aggregator(hidden 1152, ...).
_FLOW_DEFAULTS: dict[str, Any] = {}
_AGGREGATOR_DEFAULTS: dict[str, Any] = {"hidden_size": 1152}


@dataclass(frozen=True)
class TalkerConfig:
    """`talker/config.json` plus the backbone width it must agree with."""

    flow: BlockStackConfig  # `flowmodel`: the CFM's DiT
    aggregator: BlockStackConfig  # latent patch -> one backbone input embedding
    steps: int  # Euler steps of the flow-matching ODE
    patch_size: int  # latent frames per AR step
    history_patch_size: int  # latent frames of history the DiT sees
    llm_hidden_size: int  # the backbone's hidden width H
    latent_dim: int = LATENT_DIM

    @classmethod
    def from_dicts(cls, talker: dict[str, Any], llm: dict[str, Any]) -> TalkerConfig:
        """`talker/config.json` and `talker/llm/config.json` as parsed JSON."""
        hidden = _positive_int("llm/config.json hidden_size", llm.get("hidden_size"))
        for key in ("flowmodel", "aggregator", "steps", "patch_size", "history_patch_size"):
            if key not in talker:
                raise ValueError(f"talker config.json lacks {key!r}")
        flow = BlockStackConfig.from_dict("flowmodel", talker["flowmodel"], _FLOW_DEFAULTS)
        # the aggregator's output width is the backbone's; an `llm_cond_dim` there is inert
        aggregator = BlockStackConfig.from_dict("aggregator", talker["aggregator"], _AGGREGATOR_DEFAULTS)
        cfg = cls(
            flow=flow,
            aggregator=aggregator,
            steps=_positive_int("steps", talker["steps"]),
            patch_size=_positive_int("patch_size", talker["patch_size"]),
            history_patch_size=_positive_int("history_patch_size", talker["history_patch_size"]),
            llm_hidden_size=hidden,
        )
        if cfg.history_patch_size < cfg.patch_size:
            raise ValueError(
                f"history_patch_size {cfg.history_patch_size} must be >= patch_size {cfg.patch_size}"
            )
        if flow.llm_cond_dim != hidden:
            raise ValueError(
                f"flowmodel.llm_cond_dim {flow.llm_cond_dim} must equal the backbone hidden_size {hidden} "
                "(upstream's DiT default is 896, whatever the backbone)"
            )
        return cfg


def backbone_config(llm: dict[str, Any]) -> Qwen2Config:
    """`talker/llm/config.json` -> transformers' Qwen2Config, SDPA attention (as upstream sets it)."""
    if llm.get("model_type", "qwen2") != "qwen2":
        raise ValueError(f"llm/config.json model_type must be 'qwen2', got {llm.get('model_type')!r}")
    hf = Qwen2Config(**llm)
    hf._attn_implementation = "sdpa"
    return hf
