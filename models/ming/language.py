"""Ming's language model (`llm_config`, checkpoint prefix `model.`): Ling's BailingMoeV2 with three
routers per MoE layer (text `gate`, `image_gate`, `audio_gate`), 3-row VideoRoPE positions, and
input embeddings where the image / audio placeholder tokens sit.

Legend: T = tokens, M = media rows, d = hidden. `MingLanguageModel.forward(ids [T], positions [3, T]
| [T], ctx, embeds=None, gate=None) -> hidden [T, d]`:
- `embeds`: (mask [T] bool, rows [M, d]) - row j replaces the embedding of the j-th masked token
  (the encoders' L2-normalised image / audio features, in token order);
- `gate` [T] long: 0 text, 1 image (<imagePatch> / <framePatch>), 2 audio (<audioPatch>); None (a
  text-only prefill, every decode step) routes every token by `gate` - the upstream MultiRouter rule;
- positions [T] (decode: cache length + rope delta) are widened to 3 equal rows.
The module tree is `BailingMoeV2ForCausalLM`'s (`model.*`, `lm_head`), so under the thinker's `model.`
prefix the checkpoint's `model.model.*` / `model.lm_head` keys load as they are; only the per-head
norms are named `q_norm` / `k_norm` there (`query_layernorm` / `key_layernorm` in Ling), which
`checkpoint_name` maps.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.config import MoEConfig
from engine.layers.attention import NoCacheContext
from engine.layers.moe import Router, route_by_gate
from engine.loader import WeightTarget
from models.ling.config import BailingMoeV2Config
from models.ling.model import BailingMoE, BailingMoeV2ForCausalLM
from models.ming.positions import video_rope_rows

TEXT_GATE, IMAGE_GATE, AUDIO_GATE = range(3)  # per-token gate id -> gate, image_gate, audio_gate


class _Routing:
    """The current forward's per-token gate ids, shared by every MoE layer of one model."""

    gate: torch.Tensor | None = None


class MingMoE(BailingMoE):
    """BailingMoE with the MultiRouter: `gate`, `image_gate`, `audio_gate` over the same experts."""

    def __init__(self, cfg: MoEConfig, routing: _Routing) -> None:
        super().__init__(cfg)
        self.image_gate = Router(cfg)
        self.audio_gate = Router(cfg)
        self._routing = routing

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        routers = [self.gate, self.image_gate, self.audio_gate]
        return route_by_gate(x, routers, self._routing.gate)  # (T, K) each


class MingLanguageModel(BailingMoeV2ForCausalLM):
    """BailingMoeV2ForCausalLM whose MoE layers carry the MultiRouter and whose rotary takes 3 rows."""

    def __init__(self, cfg: BailingMoeV2Config) -> None:
        super().__init__(cfg)
        self._routing = _Routing()
        for layer in self.model.layers:
            if isinstance(layer.mlp, BailingMoE):
                layer.mlp = MingMoE(cfg.moe_config(), self._routing)
        rope = self.model.rotary_emb
        rope.set_position_rows(video_rope_rows(rope.inv_freq.shape[0]))

    @staticmethod
    def checkpoint_name(ours: str) -> str:
        """Our parameter name -> the Ming checkpoint's key."""
        return ours.replace(".attention.query_layernorm.", ".attention.q_norm.").replace(
            ".attention.key_layernorm.", ".attention.k_norm."
        )

    def weight_targets(self, prefix: str = "") -> dict[str, WeightTarget]:
        """Every checkpoint key of the language model (stacked experts included) -> destination;
        `prefix` "model" gives the thinker's `model.model.*` / `model.lm_head.weight`."""
        lead = f"{prefix}." if prefix else ""
        return {self.checkpoint_name(lead + key): t for key, t in super().weight_targets().items()}

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: Any = None,
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inner = self.model
        h = inner.word_embeddings(ids)  # (T, d)
        if embeds is not None:
            mask, rows = embeds
            if int(mask.sum()) != rows.shape[0]:
                raise ValueError(f"{int(mask.sum())} media tokens but {rows.shape[0]} embedding rows")
            h = h.clone()
            h[mask] = rows.to(h.dtype)
        if positions.dim() == 1:
            positions = positions[None, :].expand(3, -1)  # (3, T)
        cos_sin = inner.rotary_emb.cos_sin(positions, h.dtype)  # (T, R) each
        ctx = NoCacheContext() if ctx is None else ctx
        self._routing.gate = gate
        try:
            for layer in inner.layers:
                h = layer(h, inner.rotary_emb, cos_sin, ctx)
        finally:
            self._routing.gate = None
        return inner.norm(h)
