"""Write a block-FP8 checkpoint in the layout of the FP8 releases (Ling-1T-FP8, DeepSeek-V3 style).

Flow: config + float state dict -> every projection weight (`query_key_value`, `dense`, `gate_proj`,
`up_proj`, `down_proj`: attention, dense MLPs, routed and shared experts) quantised by
`engine.fp8.quantize` into float8_e4m3fn + `weight_scale_inv` float32 -> the rest (embeddings,
norms, routers, lm_head) in `dtype` -> config.json with `quantization_config`. Sharding as for
any demo checkpoint. Used by tests and to make tiny FP8 demo folders; not a converter for real
checkpoints (those ship already quantised).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from bailing.demo.safetensors_writer import write_safetensors_checkpoint
from engine.fp8 import SCALE_SUFFIX, quantize

QUANTISED = re.compile(r"\.(query_key_value|dense|gate_proj|up_proj|down_proj)\.weight$")


def fp8_state_dict(
    state_dict: dict[str, torch.Tensor], block: tuple[int, int]
) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
    """Quantise the projection weights; returns the new state dict and the keys stored as they are
    (the FP8 weights and their scales)."""
    out: dict[str, torch.Tensor] = {}
    exact: set[str] = set()
    for key, tensor in state_dict.items():
        if QUANTISED.search(key) and tensor.dim() == 2:
            out[key], out[key + SCALE_SUFFIX] = quantize(tensor, block)
            exact |= {key, key + SCALE_SUFFIX}
        else:
            out[key] = tensor
    return out, frozenset(exact)


def write_fp8_checkpoint(
    out_dir: str | Path,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int | None = None,
) -> Path:
    """config.json (+ quantization_config) and the quantised weights into `out_dir`; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        **config,
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": list(block),
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    state, exact = fp8_state_dict(state_dict, block)
    write_safetensors_checkpoint(out, state, dtype=dtype, max_shard_bytes=max_shard_bytes, keep_dtype=exact)
    return out
