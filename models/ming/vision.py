"""Ming's image side (checkpoint prefixes `vision.`, `linear_proj.`): pixels -> the Preview's
Qwen2.5-VL ViT (transformers' own class; its parameter names are the checkpoint's) -> 2x2 merger ->
[N, 8192] -> `linear_proj` (Linear, GELU, Linear) -> [N, d]; the thinker L2-normalises the rows.

Legend: P = ViT patches (rows of pixel_values), N = merged image tokens = P / merge², d = LLM hidden.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from models.ming.config import MingVisionConfig

VISION_ATTENTION = ("sdpa", "eager")


def hf_vision_config(cfg: MingVisionConfig, attn_implementation: str = "sdpa") -> Qwen2_5_VLVisionConfig:
    """Our `vision_config` as transformers' Qwen2.5-VL vision config (window + full-attention layers)."""
    if attn_implementation not in VISION_ATTENTION:
        raise ValueError(f"vision attention must be one of {VISION_ATTENTION}, got {attn_implementation!r}")
    hf = Qwen2_5_VLVisionConfig(
        depth=cfg.depth,
        hidden_size=cfg.hidden_size,
        hidden_act=cfg.hidden_act,
        intermediate_size=cfg.intermediate_size,
        num_heads=cfg.num_heads,
        in_channels=cfg.in_channels,
        patch_size=cfg.patch_size,
        spatial_merge_size=cfg.spatial_merge_size,
        temporal_patch_size=cfg.temporal_patch_size,
        tokens_per_second=cfg.tokens_per_second,
        window_size=cfg.window_size,
        out_hidden_size=cfg.out_hidden_size,
        fullatt_block_indexes=list(cfg.fullatt_block_indexes),
    )
    hf._attn_implementation = attn_implementation  # sdpa / eager run the windows one by one
    return hf


class MingVision(Qwen2_5_VisionTransformerPretrainedModel):
    """The Preview ViT: transformers' Qwen2.5-VL vision transformer, unchanged.
    `features(pixel_values [P, 3·t·p·p], grid_thw [I, 3]) -> [N, 8192]`, merged units in raster
    order. `attn_implementation`: "sdpa" (default) or "eager", its readable twin (transformers')."""

    def __init__(self, cfg: MingVisionConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__(hf_vision_config(cfg, attn_implementation))

    def features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embed.proj.weight
        out = self(pixel_values.to(weight.device, weight.dtype), grid_thw=grid_thw.to(weight.device))
        return out.pooler_output  # (N, out_hidden)


def image_projector(in_dim: int, hidden: int) -> nn.Sequential:
    """`linear_proj` (mlp_depth 2): Linear, GELU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
