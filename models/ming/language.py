"""Ming's language model (`llm_config`, checkpoint prefix `model.`): Ling's BailingMoeV2 with three
routers per MoE layer (text `gate`, `image_gate`, `audio_gate`), 3-row VideoRoPE positions, and
input embeddings where the image / audio placeholder tokens sit.

Legend: T = tokens, d = hidden. `MingLanguageModel.forward(ids [T], positions [3, T] | [T], ctx,
embeds=None, gate=None) -> hidden [T, d]`:
- `embeds`: (mask [T] bool, rows [M, d]) - row j replaces the embedding of the j-th masked token
  (the encoders' L2-normalised image / audio features, in placeholder order);
- `gate` [T] long: 0 text, 1 image (<imagePatch> / <framePatch>), 2 audio (<audioPatch>); None (a
  text-only prefill, every decode step) routes every token by `gate` - the upstream MultiRouter rule;
- positions [T] (decode: cache length + rope delta, equal on every row) are widened to 3 rows.
The module tree is `BailingMoeV2ForCausalLM`'s, so the checkpoint's `model.model.*` and
`model.lm_head` keys load as they are; only the per-head norms are named `q_norm` / `k_norm` there
(`query_layernorm` / `key_layernorm` in Ling), which `checkpoint_name` maps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.layers.attention import NoCacheContext
from engine.layers.moe import Router, route_by_gate
from engine.loader import WeightTarget
from models.ling.config import BailingMoeV2Config
from models.ling.model import BailingMoE, BailingMoeV2ForCausalLM
from models.ming.positions import video_rope_rows

# What the upstream Ming LLM does whatever llm_config says (spec ming_layout.md section 1).
MING_LLM_FIXED: dict[str, Any] = {
    "use_qk_norm": True,
    "moe_router_enable_expert_bias": True,
    "score_function": "sigmoid",
    "norm_topk_prob": True,
    "num_nextn_predict_layers": 0,
    "rope_scaling": None,  # video_rope: 3-row positions, applied through video_rope_rows()
}
GATES = ("gate", "image_gate", "audio_gate")  # index = the per-token gate id


def ming_llm_config(llm_config: dict[str, Any]) -> BailingMoeV2Config:
    raw = {**llm_config, **MING_LLM_FIXED}
    raw.setdefault("routed_scaling_factor", 2.5)  # the code's default (it never reads the topk factor)
    return BailingMoeV2Config.from_dict(raw)


class _Routing:
    """The current forward's per-token gate ids, shared by every MoE layer of one model."""

    gate: torch.Tensor | None = None


class MingMoE(BailingMoE):
    """BailingMoE with the MultiRouter: `gate`, `image_gate`, `audio_gate` over the same experts."""

    def __init__(self, cfg: Any, routing: _Routing) -> None:
        super().__init__(cfg)
        self.image_gate = Router(cfg)
        self.audio_gate = Router(cfg)
        self._routing = routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = route_by_gate(x, [self.gate, self.image_gate, self.audio_gate], self._routing.gate)
        out = self.experts(x, weights, ids)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out


class MingLanguageModel(nn.Module):
    """Holds `model` (a BailingMoeV2ForCausalLM with MultiRouter MoE layers): keys `model.model.*`,
    `model.lm_head.weight` as in the Ming checkpoint."""

    def __init__(self, cfg: BailingMoeV2Config) -> None:
        super().__init__()
        self.config = cfg
        self.model = BailingMoeV2ForCausalLM(cfg)
        self._routing = _Routing()
        for layer in self.model.model.layers:
            if isinstance(layer.mlp, BailingMoE):
                layer.mlp = MingMoE(cfg.moe_config(), self._routing)
        rope = self.model.model.rotary_emb
        rope.set_position_rows(video_rope_rows(rope.inv_freq.shape[0]))

    @staticmethod
    def checkpoint_name(ours: str) -> str:
        """Our parameter name -> the Ming checkpoint's key."""
        return ours.replace(".attention.query_layernorm.", ".attention.q_norm.").replace(
            ".attention.key_layernorm.", ".attention.k_norm."
        )

    def weight_targets(self, prefix: str = "model") -> dict[str, WeightTarget]:
        """Every checkpoint key of the language model (stacked experts included) -> destination."""
        return {
            self.checkpoint_name(f"{prefix}.{key}"): target
            for key, target in self.model.weight_targets().items()
        }

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: Any = None,
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inner = self.model.model
        h = inner.word_embeddings(ids)  # (T, d)
        if embeds is not None:
            mask, rows = embeds
            h = h.clone()
            h[mask] = rows.to(h.dtype)
        if positions.dim() == 1:
            positions = positions[None, :].expand(3, -1)  # (3, T)
        cos_sin = inner.rotary_emb.cos_sin(positions, h.dtype)
        ctx = NoCacheContext() if ctx is None else ctx
        self._routing.gate = gate
        try:
            for layer in inner.layers:
                h = layer(h, inner.rotary_emb, cos_sin, ctx)
        finally:
            self._routing.gate = None
        return inner.norm(h)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)
