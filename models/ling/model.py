"""BailingMoeV2ForCausalLM (Ling 2.0 / Ring 2.0): the module tree mirrors the checkpoint's key names.

Legend: T = tokens, d = hidden, H = query heads, Hkv = KV heads, D = head_dim.
ids [T] -> word_embeddings -> L x (input_layernorm -> attention -> residual ->
post_attention_layernorm -> dense MLP (i < first_k_dense_replace) or MoE -> residual) -> norm -> lm_head.
MTP layers (`model.layers.{L..L+n-1}`) do not change the main logits and are skipped at load.
Built under `engine.parallel.building(group)`, every projection, the embedding, lm_head and the
experts hold one rank's share (engine/parallel); norms, rotary and routers are replicated.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from engine.config import ModelRuntimeConfig, MoEConfig
from engine.layers.attention import NoCacheContext
from engine.layers.mlp import SwiGLUMLP
from engine.layers.moe import FusedExperts, Router
from engine.layers.norm import RMSNorm
from engine.layers.rotary import RotaryEmbedding
from engine.model_base import CausalLM
from engine.parallel.group import current_group
from engine.parallel.linear import (
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from models.ling.config import BailingMoeV2Config

_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")


class BailingAttention(nn.Module):
    """Fused QKV [(H + 2 Hkv) D, d] -> per-head QK RMSNorm -> partial RoPE -> attention -> dense."""

    def __init__(self, cfg: BailingMoeV2Config, layer_idx: int) -> None:
        super().__init__()
        a = cfg.attention_config()
        self.query_key_value = QKVParallelLinear(
            a.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim, bias=a.qkv_bias
        )
        heads = self.query_key_value.heads  # this rank's share (all of them on one rank)
        self.layer_idx, self.num_heads, self.num_kv_heads, self.head_dim = (
            layer_idx,
            heads.q_heads,
            heads.kv_heads,
            a.head_dim,
        )
        self.query_layernorm = RMSNorm(a.head_dim, a.norm_eps) if a.qk_norm else None
        self.key_layernorm = RMSNorm(a.head_dim, a.norm_eps) if a.qk_norm else None
        self.dense = RowParallelLinear(a.num_heads * a.head_dim, a.hidden_size, bias=a.out_bias)

    def forward(
        self, x: torch.Tensor, rope: RotaryEmbedding, cos_sin: tuple[torch.Tensor, torch.Tensor], ctx: Any
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.query_key_value(x).view(
            t, self.num_heads + 2 * self.num_kv_heads, self.head_dim
        )  # (T, H+2Hkv, D)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        if self.query_layernorm is not None:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = rope(q, *cos_sin), rope(k, *cos_sin)
        out = ctx.attend(self.layer_idx, q, k, v.contiguous())  # (T, H, D)
        return self.dense(out.reshape(t, self.num_heads * self.head_dim))  # (T, d)


class BailingMoE(nn.Module):
    """Router (`gate`) -> stacked routed experts (`experts`) + unweighted shared experts.
    Over several ranks both give partial sums, added up by one all-reduce."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.group = current_group()
        self.gate = Router(cfg)
        self.experts = FusedExperts(cfg)
        shared = cfg.shared_intermediate_size
        self.shared_experts = None if shared is None else SwiGLUMLP(cfg.hidden_size, shared, reduce=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gate(x)  # (T, K) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.route(x)  # (T, K) each
        out = self.experts(x, weights, ids)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return self.group.all_reduce(out)


class BailingDecoderLayer(nn.Module):
    def __init__(self, cfg: BailingMoeV2Config, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = BailingAttention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        dense = layer_idx < cfg.first_k_dense_replace
        self.mlp = (
            SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size) if dense else BailingMoE(cfg.moe_config())
        )

    def forward(
        self, h: torch.Tensor, rope: RotaryEmbedding, cos_sin: tuple[torch.Tensor, torch.Tensor], ctx: Any
    ) -> torch.Tensor:
        h = h + self.attention(self.input_layernorm(h), rope, cos_sin, ctx)
        return h + self.mlp(self.post_attention_layernorm(h))


class BailingMoeV2Model(nn.Module):
    def __init__(self, cfg: BailingMoeV2Config) -> None:
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(BailingDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.rope_config())

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
        h = self.word_embeddings(ids)  # (T, d)
        cos_sin = self.rotary_emb.cos_sin(positions, h.dtype)  # (T, R) each
        for layer in self.layers:
            h = layer(h, self.rotary_emb, cos_sin, ctx)
        return self.norm(h)


class BailingMoeV2ForCausalLM(CausalLM):
    default_stop_strings = ("<|role_end|>",)  # the model sometimes spells its end-of-turn token out
    compiled_decode = True

    def __init__(self, cfg: BailingMoeV2Config) -> None:
        super().__init__()
        self.config = cfg
        self.model = BailingMoeV2Model(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else ParallelLMHead(cfg.hidden_size, cfg.vocab_size)
        self.runtime = ModelRuntimeConfig(
            vocab_size=cfg.vocab_size,
            num_layers=cfg.num_hidden_layers,
            num_kv_heads=self.model.layers[0].attention.num_kv_heads,  # this rank's (its KV cache)
            head_dim=cfg.head_dim,
            max_position=cfg.max_position_embeddings,
            eos_token_ids=cfg.eos_token_ids,
            bos_token_id=cfg.bos_token_id,
            pad_token_id=cfg.pad_token_id,
        )

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> BailingMoeV2ForCausalLM:
        return cls(BailingMoeV2Config.from_dict(config))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        return self.model(ids, positions, NoCacheContext() if ctx is None else ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.word_embeddings if self.lm_head is None else self.lm_head
        return head.logits(hidden)  # (T, V) float32, gathered on rank 0 (None on the others)

    def ignore_checkpoint_key(self, name: str) -> bool:
        """MTP layers live at model.layers.{L..L+n-1} (Ling-V2 layout) and are not used for serving."""
        m = _LAYER_KEY.match(name)
        if m is None:
            return False
        idx = int(m.group(1))
        cfg = self.config
        return cfg.num_hidden_layers <= idx < cfg.num_hidden_layers + cfg.num_nextn_predict_layers
