"""Convert a BailingMoeV2 (Ling/Ring) checkpoint into transformers' native `Glm4MoeForCausalLM`.

BailingMoeV2 config dict + state dict in; a `Glm4MoeConfig`, a renamed state dict, or a loaded eval-mode
model out (pure functions, no file I/O). Glm4Moe computes exactly BailingMoeV2's math once the keys are
converted, so it serves as an independent reference in tests and as the benchmark baseline.

Legend: d = hidden_size, H = query heads, Hkv = KV heads, D = head_dim, R = rotary_dim,
E = routed experts, I = moe_intermediate_size, L = num_hidden_layers.

Semantics chosen where BailingMoeV2 implementations disagree (see specs/bailing_moe_v2.md):
- rotary dim R = int(D * partial_rotary_factor) if that key is set, else `rotary_dim`, else D.
- top-k weights are renormalised iff `norm_topk_prob` (default true) AND top_k > 1 (official code).
- shared-expert width = `moe_shared_expert_intermediate_size` (default I) * num_shared_experts (vLLM);
  Glm4Moe builds I * n_shared_experts, so n_shared_experts is set to width / I (ValueError if not whole).
- `score_function` missing means sigmoid (the official code always uses sigmoid).
- rope_scaling: default or yarn, computed by transformers 5's yarn (the explicit `factor` is used).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from transformers import Glm4MoeConfig, Glm4MoeForCausalLM
from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeRotaryEmbedding

from models.ling.config import BailingMoeV2Config

_SUPPORTED_ROPE_TYPES = ("default", "yarn")
_ROUTER_PARAMS = ("mlp.gate.weight", "mlp.gate.e_score_correction_bias")  # kept in fp32, as upstream
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EXPERT_KEY = re.compile(r"mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")

# Per-layer keys whose name changes but whose tensor is kept as is (BailingMoeV2 -> Glm4Moe).
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "attention.dense.weight": "self_attn.o_proj.weight",
    "attention.query_layernorm.weight": "self_attn.q_norm.weight",
    "attention.key_layernorm.weight": "self_attn.k_norm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "mlp.gate.weight": "mlp.gate.weight",
    "mlp.gate.expert_bias": "mlp.gate.e_score_correction_bias",
    "mlp.shared_experts.gate_proj.weight": "mlp.shared_experts.gate_proj.weight",
    "mlp.shared_experts.up_proj.weight": "mlp.shared_experts.up_proj.weight",
    "mlp.shared_experts.down_proj.weight": "mlp.shared_experts.down_proj.weight",
}
_TOP_RENAMES = {
    "model.word_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def _partial_factor(rotary_dim: int, head_dim: int) -> float:
    """A factor f with int(D * f) == R exactly (R / D can round down by one ulp)."""
    factor = rotary_dim / head_dim
    if int(head_dim * factor) != rotary_dim:
        factor = (rotary_dim + 0.5) / head_dim
    return factor


def _rope_parameters(cfg: BailingMoeV2Config) -> dict[str, Any]:
    """Glm4Moe `rope_parameters`: rope type (+ its scaling fields), theta and the partial factor."""
    params: dict[str, Any] = {"rope_type": "default"}
    if cfg.rope_scaling:
        kind = cfg.rope_scaling.get("rope_type") or cfg.rope_scaling.get("type") or "default"
        if kind not in _SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope_scaling type {kind!r} is not supported (supported: {_SUPPORTED_ROPE_TYPES})"
            )
        params.update({k: v for k, v in cfg.rope_scaling.items() if k not in ("type", "rope_type")})
        params["rope_type"] = kind
    params["rope_theta"] = cfg.rope_theta
    params["partial_rotary_factor"] = _partial_factor(cfg.rotary_dim, cfg.head_dim)
    return params


def _shared_expert_count(cfg: BailingMoeV2Config) -> int:
    """Glm4Moe n_shared_experts so that moe_intermediate_size * n == BailingMoeV2's shared-expert width."""
    width = cfg.shared_expert_intermediate_size or 0  # None: Glm4Moe builds a zero-width one (adds zeros)
    if width % cfg.moe_intermediate_size:
        raise ValueError(
            f"moe_shared_expert_intermediate_size x num_shared_experts = {width} is not a multiple of "
            f"moe_intermediate_size ({cfg.moe_intermediate_size}); Glm4Moe cannot express it"
        )
    return width // cfg.moe_intermediate_size


def _check_expressible(cfg: BailingMoeV2Config) -> None:
    """Raise ValueError naming the field for BailingMoeV2 features Glm4Moe has no slot for."""
    if cfg.use_bias:
        raise ValueError("use_bias=true (bias on attention.dense) is not expressible in Glm4Moe")
    if cfg.score_function != "sigmoid":
        raise ValueError(
            f"score_function {cfg.score_function!r} is not expressible in Glm4Moe (sigmoid only)"
        )
    if cfg.num_experts // cfg.n_group < 2:
        raise ValueError(
            f"num_experts ({cfg.num_experts}) must give >= 2 experts per group (top-2 group score)"
        )


def glm4moe_config_from_bailing(config: dict) -> Glm4MoeConfig:
    """Build the Glm4MoeConfig (no MTP, eager attention and experts) computing this BailingMoeV2 config."""
    cfg = BailingMoeV2Config.from_dict(config)
    _check_expressible(cfg)
    return Glm4MoeConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_mtp_layers=0,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attention_bias=cfg.use_qkv_bias,
        use_qk_norm=cfg.use_qk_norm,
        rope_parameters=_rope_parameters(cfg),
        moe_intermediate_size=cfg.moe_intermediate_size,
        num_experts_per_tok=cfg.num_experts_per_tok,
        n_routed_experts=cfg.num_experts,
        n_shared_experts=_shared_expert_count(cfg),
        routed_scaling_factor=cfg.routed_scaling_factor,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        norm_topk_prob=cfg.norm_topk_prob and cfg.num_experts_per_tok > 1,
        first_k_dense_replace=cfg.first_k_dense_replace,
        pad_token_id=cfg.pad_token_id,
        eos_token_id=list(cfg.eos_token_ids) or None,
        bos_token_id=cfg.bos_token_id,
        attn_implementation="eager",
        experts_implementation="eager",
    )


def _split_qkv(key: str, tensor: torch.Tensor, cfg: BailingMoeV2Config) -> list[torch.Tensor]:
    """Fused QKV rows [Q (H*D) | K (Hkv*D) | V (Hkv*D)] -> [q, k, v] (weight [rows, d] or bias [rows])."""
    q_rows = cfg.num_attention_heads * cfg.head_dim
    kv_rows = cfg.num_key_value_heads * cfg.head_dim
    if tensor.shape[0] != q_rows + 2 * kv_rows:
        raise ValueError(
            f"{key}: expected {q_rows + 2 * kv_rows} rows ((H+2Hkv)*D), got {tuple(tensor.shape)}"
        )
    return list(torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0))


def _convert_layer_key(
    layer: int, sub: str, tensor: torch.Tensor, cfg: BailingMoeV2Config, out: dict[str, torch.Tensor]
) -> bool:
    """Write the Glm4Moe tensor(s) for one non-expert layer key into `out`; False if the key is unknown."""
    prefix = f"model.layers.{layer}."
    if sub in _LAYER_RENAMES:
        out[prefix + _LAYER_RENAMES[sub]] = tensor
        return True
    if sub in ("attention.query_key_value.weight", "attention.query_key_value.bias"):
        kind = sub.rsplit(".", 1)[1]
        for name, part in zip(("q", "k", "v"), _split_qkv(prefix + sub, tensor, cfg), strict=True):
            out[f"{prefix}self_attn.{name}_proj.{kind}"] = part
        return True
    return False


def _stack_experts(
    layer: int, experts: dict[int, dict[str, torch.Tensor]], num_experts: int
) -> dict[str, torch.Tensor]:
    """Per-expert SwiGLU weights -> gate_up_proj [E, 2I, d] (gate rows first) and down_proj [E, d, I]."""
    prefix = f"model.layers.{layer}.mlp.experts."
    gate_up, down = [], []
    for e in range(num_experts):
        parts = experts.get(e, {})
        for proj in ("gate_proj", "up_proj", "down_proj"):
            if proj not in parts:
                raise ValueError(f"missing checkpoint key {prefix}{e}.{proj}.weight")
        gate_up.append(torch.cat([parts["gate_proj"], parts["up_proj"]], dim=0))  # (2I, d)
        down.append(parts["down_proj"])  # (d, I)
    extra = sorted(set(experts) - set(range(num_experts)))
    if extra:
        raise ValueError(f"unexpected checkpoint key {prefix}{extra[0]}.* (num_experts={num_experts})")
    return {
        prefix + "gate_up_proj": torch.stack(gate_up),
        prefix + "down_proj": torch.stack(down),
    }  # (E, ., .)


def _fill_defaults(out: dict[str, torch.Tensor], cfg: BailingMoeV2Config) -> None:
    """Add tensors BailingMoeV2 may omit: zero expert bias, zero-width shared expert, tied lm_head."""
    hidden, num_experts = cfg.hidden_size, cfg.num_experts
    no_shared = cfg.shared_expert_intermediate_size is None
    for layer in range(cfg.first_k_dense_replace, cfg.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp."
        out.setdefault(prefix + "gate.e_score_correction_bias", torch.zeros(num_experts))
        if no_shared:
            for proj, shape in (
                ("gate_proj", (0, hidden)),
                ("up_proj", (0, hidden)),
                ("down_proj", (hidden, 0)),
            ):
                out.setdefault(f"{prefix}shared_experts.{proj}.weight", torch.zeros(shape))
    if cfg.tie_word_embeddings and "model.embed_tokens.weight" in out:
        out.setdefault("lm_head.weight", out["model.embed_tokens.weight"])


def glm4moe_state_dict_from_bailing(
    state: Mapping[str, torch.Tensor], config: dict
) -> dict[str, torch.Tensor]:
    """Rename/split/stack BailingMoeV2 checkpoint tensors into Glm4Moe's layout; MTP layers are dropped."""
    cfg = BailingMoeV2Config.from_dict(config)
    num_layers, num_experts = cfg.num_hidden_layers, cfg.num_experts
    out: dict[str, torch.Tensor] = {}
    experts: dict[int, dict[int, dict[str, torch.Tensor]]] = {}  # layer -> expert -> proj -> weight
    for key, tensor in state.items():
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = tensor
            continue
        match = _LAYER_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"unexpected checkpoint key {key}")
        layer, sub = int(match.group(1)), match.group(2)
        if layer >= num_layers:  # MTP layers: they never change the main logits
            continue
        expert = _EXPERT_KEY.fullmatch(sub)
        if expert is not None:
            experts.setdefault(layer, {}).setdefault(int(expert.group(1)), {})[expert.group(2)] = tensor
        elif not _convert_layer_key(layer, sub, tensor, cfg, out):
            raise ValueError(f"unexpected checkpoint key {key}")
    for layer, per_expert in experts.items():
        out.update(_stack_experts(layer, per_expert, num_experts))
    _fill_defaults(out, cfg)
    return out


def _check_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Every model tensor present with the right shape and no extra tensors; ValueError names the key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in expected.items():
        if key not in state:
            raise ValueError(f"missing checkpoint tensor for {key} (expected shape {shape})")
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{key}: expected shape {shape}, got {tuple(state[key].shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ValueError(f"unexpected checkpoint tensor {extra[0]}")


def load_glm4moe_reference(
    config: dict, state: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> Glm4MoeForCausalLM:
    """Build Glm4MoeForCausalLM (eager, eval) from a BailingMoeV2 config + state dict, loaded strictly.

    The model is created on the meta device and the converted tensors are assigned (no random init, no
    second copy: tensors already in `dtype` are shared with `state`). The router weight and expert bias
    stay float32, as in transformers' own loading.
    """
    glm_config = glm4moe_config_from_bailing(config)
    converted = glm4moe_state_dict_from_bailing(state, config)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")  # 0-width shared
        model = Glm4MoeForCausalLM(glm_config)
    _check_strict(model, converted)
    typed = {k: v.to(torch.float32 if k.endswith(_ROUTER_PARAMS) else dtype) for k, v in converted.items()}
    model.load_state_dict(typed, strict=True, assign=True)
    model.model.rotary_emb = Glm4MoeRotaryEmbedding(glm_config)  # real (non-meta) inv_freq buffers
    if glm_config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.requires_grad_(False).eval()
