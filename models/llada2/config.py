"""LLaDA2 config.json -> BailingMoeV2Config with the fields the official LLaDA2 code hard-wires.

The LLaDA2 module tree is Ling's (same keys, same shapes); its code ignores some config.json keys
that Ling honours. `llada2_config` pins those before Ling's parser runs, so the parsing and
validation stay in one place (models/ling/config.py). `mask_token_id` is read when present (the
official configs have none: the engine resolves `<|mask|>` from the tokenizer).
"""

from __future__ import annotations

from typing import Any

from models.ling.config import BailingMoeV2Config

# What the official LLaDA2 code does whatever config.json says (spec llada2.md "Differences").
LLADA2_FIXED_FIELDS: dict[str, Any] = {
    "use_qk_norm": True,  # QK-RMSNorm is always built and applied
    "num_nextn_predict_layers": 0,  # no MTP layers
    "moe_router_enable_expert_bias": True,  # the expert_bias buffer always exists
    "score_function": "sigmoid",  # routing is always sigmoid ...
    "norm_topk_prob": True,  # ... with the top-k weights renormalised (in float32: engine Router)
}


def llada2_config(raw: dict[str, Any]) -> BailingMoeV2Config:
    """Parse a LLaDA2 config.json dict; invalid values raise ValueError naming the field."""
    return BailingMoeV2Config.from_dict({**raw, **LLADA2_FIXED_FIELDS})


def mask_token_id(raw: dict[str, Any], vocab_size: int) -> int | None:
    """config.json's optional `mask_token_id` (None when absent), checked against the vocabulary."""
    value = raw.get("mask_token_id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ValueError(
            f"config.json field 'mask_token_id' must be an id in [0, {vocab_size}), got {value!r}"
        )
    return value
