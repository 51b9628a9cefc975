"""Ming 2.0's image side (checkpoint prefixes `vision.`, `linear_proj.`): pixels -> the Qwen3-VL-MoE
style ViT (transformers' own `Qwen3VLMoeVisionModel`; its parameter names and math are those of the
upstream `qwen3_moe_vit.py`) -> 2x2 merger -> [N, out_hidden] -> `linear_proj` -> [N, d].

The deepstack mergers (`vision.deepstack_merger_list.*`) are loaded with the checkpoint but never
run: upstream's thinker computes their outputs and drops them, so skipping them changes nothing.
Legend: P = ViT patches (rows of pixel_values), N = merged image tokens = P / merge², d = LLM hidden.
"""

from __future__ import annotations

import torch
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeVisionConfig
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeVisionModel

from models.ming.config import MingVision3Config
from models.ming.vision import VISION_ATTENTION


def hf_vision3_config(cfg: MingVision3Config, attn_implementation: str = "sdpa") -> Qwen3VLMoeVisionConfig:
    """Our 2.0 `vision_config` as transformers' Qwen3-VL-MoE vision config (2-D rotary at theta 1e4,
    as upstream's `Qwen3VLMoeVisionRotaryEmbedding(head_dim // 2)` is)."""
    if attn_implementation not in VISION_ATTENTION:
        raise ValueError(f"vision attention must be one of {VISION_ATTENTION}, got {attn_implementation!r}")
    hf = Qwen3VLMoeVisionConfig(
        depth=cfg.depth,
        hidden_size=cfg.hidden_size,
        hidden_act=cfg.hidden_act,
        intermediate_size=cfg.intermediate_size,
        num_heads=cfg.num_heads,
        in_channels=cfg.in_channels,
        patch_size=cfg.patch_size,
        spatial_merge_size=cfg.spatial_merge_size,
        temporal_patch_size=cfg.temporal_patch_size,
        out_hidden_size=cfg.out_hidden_size,
        num_position_embeddings=cfg.num_position_embeddings,
        deepstack_visual_indexes=list(cfg.deepstack_visual_indexes),
        rope_parameters={"rope_type": "axial", "rope_theta": 10000.0},
    )
    hf._attn_implementation = attn_implementation  # sdpa / eager run the frames one by one
    return hf


class MingVision3(Qwen3VLMoeVisionModel):
    """The 2.0 ViT: transformers' Qwen3-VL-MoE vision model. `features(pixel_values [P, 3·t·p·p],
    grid_thw [I, 3]) -> [N, out_hidden]`, merged units in raster order. `attn_implementation`: "sdpa"
    (default) or "eager", its readable twin (transformers'). `deepstack=True` runs the deepstack
    mergers too (transformers' default; their outputs are still not returned by `features`)."""

    def __init__(self, cfg: MingVision3Config, attn_implementation: str = "sdpa", deepstack: bool = False):
        super().__init__(hf_vision3_config(cfg, attn_implementation))
        if not deepstack:  # transformers' forward runs a deepstack merger after exactly these blocks
            self.deepstack_visual_indexes = []

    def features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embed.proj.weight
        out = self(pixel_values.to(weight.device, weight.dtype), grid_thw=grid_thw.to(weight.device))
        return out.pooler_output  # (N, out_hidden)
