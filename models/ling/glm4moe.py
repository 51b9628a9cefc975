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

# Defaults of the official BailingMoeV2Config, used when config.json omits a field.
_BAILING_DEFAULTS: dict[str, Any] = {
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
    "norm_topk_prob": True,
    "score_function": "sigmoid",
    "pad_token_id": 156892,
    "eos_token_id": 156892,
}

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


def _get(config: Mapping[str, Any], field: str) -> Any:
    """config[field], or the official BailingMoeV2Config default when the key is absent."""
    return config[field] if field in config else _BAILING_DEFAULTS[field]


def _positive_int(config: Mapping[str, Any], field: str) -> int:
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return value


def _head_dim(config: Mapping[str, Any]) -> int:
    """D: `head_dim`, or hidden_size // num_attention_heads when it is 0 or None."""
    head_dim = _get(config, "head_dim")
    if not head_dim:
        return _positive_int(config, "hidden_size") // _positive_int(config, "num_attention_heads")
    return _positive_int(config, "head_dim")


def _rotary_dim(config: Mapping[str, Any], head_dim: int) -> int:
    """R: int(D * partial_rotary_factor) if set, else `rotary_dim` if set, else D (full RoPE)."""
    factor = config.get("partial_rotary_factor")
    if factor is not None:
        rotary_dim, field = int(head_dim * float(factor)), "partial_rotary_factor"
    elif config.get("rotary_dim") is not None:
        rotary_dim, field = int(config["rotary_dim"]), "rotary_dim"
    else:
        rotary_dim, field = head_dim, "head_dim"
    if rotary_dim <= 0 or rotary_dim > head_dim or rotary_dim % 2:
        raise ValueError(
            f"{field} gives rotary dim {rotary_dim}; it must be even and in (0, head_dim={head_dim}]"
        )
    return rotary_dim


def _partial_factor(rotary_dim: int, head_dim: int) -> float:
    """A factor f with int(D * f) == R exactly (R / D can round down by one ulp)."""
    factor = rotary_dim / head_dim
    if int(head_dim * factor) != rotary_dim:
        factor = (rotary_dim + 0.5) / head_dim
    return factor


def _rope_parameters(config: Mapping[str, Any], head_dim: int) -> dict[str, Any]:
    """Glm4Moe `rope_parameters`: rope type (+ its scaling fields), theta and the partial factor."""
    theta = float(_get(config, "rope_theta"))
    if theta <= 0:
        raise ValueError(f"rope_theta must be positive, got {theta}")
    params: dict[str, Any] = {"rope_type": "default"}
    scaling = _get(config, "rope_scaling")
    if scaling:
        if not isinstance(scaling, Mapping):
            raise ValueError(f"rope_scaling must be a dict or null, got {scaling!r}")
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
        if kind not in _SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope_scaling type {kind!r} is not supported (supported: {_SUPPORTED_ROPE_TYPES})"
            )
        if kind == "yarn" and scaling.get("factor") is None:
            raise ValueError("rope_scaling.factor is required for yarn")
        params.update({k: v for k, v in scaling.items() if k not in ("type", "rope_type")})
        params["rope_type"] = kind
    params["rope_theta"] = theta
    params["partial_rotary_factor"] = _partial_factor(_rotary_dim(config, head_dim), head_dim)
    return params


def _grouping(config: Mapping[str, Any], num_experts: int, top_k: int) -> tuple[int, int]:
    """(n_group, topk_group); 0, 1 or None groups mean no grouping -> (1, 1)."""
    n_group = _get(config, "n_group")
    if n_group in (None, 0, 1):
        n_group, topk_group = 1, 1
    else:
        n_group = _positive_int(config, "n_group")
        topk_group = _get(config, "topk_group")
        if not isinstance(topk_group, int) or not 1 <= topk_group <= n_group:
            raise ValueError(f"topk_group must be in [1, n_group={n_group}], got {topk_group!r}")
        if num_experts % n_group:
            raise ValueError(f"n_group ({n_group}) must divide num_experts ({num_experts})")
        if topk_group * (num_experts // n_group) < top_k:
            raise ValueError(f"num_experts_per_tok ({top_k}) exceeds the experts in topk_group groups")
    if num_experts // n_group < 2:
        raise ValueError(f"num_experts ({num_experts}) must give >= 2 experts per group (top-2 group score)")
    return n_group, topk_group


def _shared_expert_count(config: Mapping[str, Any], moe_inter: int) -> int:
    """Glm4Moe n_shared_experts so that moe_inter * n == BailingMoeV2's shared-expert width."""
    count = _get(config, "num_shared_experts")
    if count is None:  # no shared expert: Glm4Moe builds a zero-width one (adds zeros)
        return 0
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"num_shared_experts must be a non-negative integer or null, got {count!r}")
    unit = config.get("moe_shared_expert_intermediate_size") or moe_inter
    width = unit * count
    if width % moe_inter:
        raise ValueError(
            f"moe_shared_expert_intermediate_size ({unit}) x num_shared_experts ({count}) = {width} is not "
            f"a multiple of moe_intermediate_size ({moe_inter}); Glm4Moe cannot express it"
        )
    return width // moe_inter


def _check_expressible(config: Mapping[str, Any]) -> None:
    """Raise ValueError naming the field for BailingMoeV2 features Glm4Moe has no slot for."""
    if _get(config, "use_bias"):
        raise ValueError("use_bias=true (bias on attention.dense) is not expressible in Glm4Moe")
    score = config.get("score_function") or "sigmoid"
    if score != "sigmoid":
        raise ValueError(f"score_function {score!r} is not expressible in Glm4Moe (sigmoid only)")


def glm4moe_config_from_bailing(config: dict) -> Glm4MoeConfig:
    """Build the Glm4MoeConfig (no MTP, eager attention and experts) computing this BailingMoeV2 config."""
    _check_expressible(config)
    hidden, heads = _positive_int(config, "hidden_size"), _positive_int(config, "num_attention_heads")
    kv_heads, head_dim = _positive_int(config, "num_key_value_heads"), _head_dim(config)
    num_experts, top_k = _positive_int(config, "num_experts"), _positive_int(config, "num_experts_per_tok")
    if top_k > num_experts:
        raise ValueError(f"num_experts_per_tok ({top_k}) must be <= num_experts ({num_experts})")
    moe_inter = _positive_int(config, "moe_intermediate_size")
    n_group, topk_group = _grouping(config, num_experts, top_k)
    return Glm4MoeConfig(
        vocab_size=_positive_int(config, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_positive_int(config, "intermediate_size"),
        num_hidden_layers=_positive_int(config, "num_hidden_layers"),
        num_mtp_layers=0,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_act=_get(config, "hidden_act"),
        rms_norm_eps=float(_get(config, "rms_norm_eps")),
        max_position_embeddings=_positive_int(config, "max_position_embeddings"),
        tie_word_embeddings=bool(_get(config, "tie_word_embeddings")),
        attention_bias=bool(_get(config, "use_qkv_bias")),
        use_qk_norm=bool(_get(config, "use_qk_norm")),
        rope_parameters=_rope_parameters(config, head_dim),
        moe_intermediate_size=moe_inter,
        num_experts_per_tok=top_k,
        n_routed_experts=num_experts,
        n_shared_experts=_shared_expert_count(config, moe_inter),
        routed_scaling_factor=float(_get(config, "routed_scaling_factor")),
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=bool(_get(config, "norm_topk_prob")) and top_k > 1,
        first_k_dense_replace=int(_get(config, "first_k_dense_replace") or 0),
        pad_token_id=config.get("pad_token_id"),
        eos_token_id=config.get("eos_token_id"),
        bos_token_id=config.get("bos_token_id"),
        attn_implementation="eager",
        experts_implementation="eager",
    )


def _split_qkv(key: str, tensor: torch.Tensor, config: Mapping[str, Any]) -> list[torch.Tensor]:
    """Fused QKV rows [Q (H*D) | K (Hkv*D) | V (Hkv*D)] -> [q, k, v] (weight [rows, d] or bias [rows])."""
    head_dim = _head_dim(config)
    q_rows = _positive_int(config, "num_attention_heads") * head_dim
    kv_rows = _positive_int(config, "num_key_value_heads") * head_dim
    if tensor.shape[0] != q_rows + 2 * kv_rows:
        raise ValueError(
            f"{key}: expected {q_rows + 2 * kv_rows} rows ((H+2Hkv)*D), got {tuple(tensor.shape)}"
        )
    return list(torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0))


def _convert_layer_key(
    layer: int, sub: str, tensor: torch.Tensor, config: Mapping[str, Any], out: dict[str, torch.Tensor]
) -> bool:
    """Write the Glm4Moe tensor(s) for one non-expert layer key into `out`; False if the key is unknown."""
    prefix = f"model.layers.{layer}."
    if sub in _LAYER_RENAMES:
        out[prefix + _LAYER_RENAMES[sub]] = tensor
        return True
    if sub in ("attention.query_key_value.weight", "attention.query_key_value.bias"):
        kind = sub.rsplit(".", 1)[1]
        for name, part in zip(("q", "k", "v"), _split_qkv(prefix + sub, tensor, config), strict=True):
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


def _fill_defaults(out: dict[str, torch.Tensor], config: Mapping[str, Any]) -> None:
    """Add tensors BailingMoeV2 may omit: zero expert bias, zero-width shared expert, tied lm_head."""
    hidden, num_experts = _positive_int(config, "hidden_size"), _positive_int(config, "num_experts")
    first_dense = int(_get(config, "first_k_dense_replace") or 0)
    no_shared = not _get(config, "num_shared_experts")
    for layer in range(first_dense, _positive_int(config, "num_hidden_layers")):
        prefix = f"model.layers.{layer}.mlp."
        out.setdefault(prefix + "gate.e_score_correction_bias", torch.zeros(num_experts))
        if no_shared:
            for proj, shape in (
                ("gate_proj", (0, hidden)),
                ("up_proj", (0, hidden)),
                ("down_proj", (hidden, 0)),
            ):
                out.setdefault(f"{prefix}shared_experts.{proj}.weight", torch.zeros(shape))
    if _get(config, "tie_word_embeddings") and "model.embed_tokens.weight" in out:
        out.setdefault("lm_head.weight", out["model.embed_tokens.weight"])


def glm4moe_state_dict_from_bailing(
    state: Mapping[str, torch.Tensor], config: dict
) -> dict[str, torch.Tensor]:
    """Rename/split/stack BailingMoeV2 checkpoint tensors into Glm4Moe's layout; MTP layers are dropped."""
    num_layers, num_experts = _positive_int(config, "num_hidden_layers"), _positive_int(config, "num_experts")
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
        elif not _convert_layer_key(layer, sub, tensor, config, out):
            raise ValueError(f"unexpected checkpoint key {key}")
    for layer, per_expert in experts.items():
        out.update(_stack_experts(layer, per_expert, num_experts))
    _fill_defaults(out, config)
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
