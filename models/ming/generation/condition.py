"""The thinker-to-DiT condition path: query hidden states -> proj_in -> connector -> proj_out -> L2 norm,
and the condition MLP that maps a condition to the DiT's caption width.

`GenerationHeads` mirrors `mlp/model.safetensors` (keys `query_tokens_dict.{s}x{s}`, `proj_in.*`,
`proj_out.*`, `mlp.*`); `BidirectionalConnector` is transformers' `Qwen2Model` built from
`connector/config.json` and run without causal masking (upstream sets every layer's
`is_causal=False` and passes an all-ones 4-D mask: every query attends to every other).
Legend: B = requests, Q = queries of the last scale (s²), H = thinker hidden, C = connector hidden,
c = condition width (diffusion_c_input_dim), D = the DiT's caption width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Config, Qwen2Model
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from models.ming.generation.config import ImageGenConfig


class ToClipMLP(nn.Module):
    """Upstream's condition MLP: Linear -> LayerNorm -> ReLU -> Linear -> LayerNorm (widths from the
    checkpoint: 2048 hidden, 2560 out for Z-Image, 4096 out for SD3)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.layer_norm1 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)
        self.layer_norm2 = nn.LayerNorm(output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm1(self.fc1(x.to(self.fc1.weight.dtype)))
        return self.layer_norm2(self.fc2(F.relu(x)))


class GenerationHeads(nn.Module):
    """The `mlp/` part: learnable queries per scale, proj_in / proj_out, and the condition MLP (None
    when `use_identity_mlp`: the condition goes to the DiT as it is)."""

    def __init__(
        self, cfg: ImageGenConfig, llm_hidden: int, connector_hidden: int, mlp_widths: tuple[int, int] | None
    ) -> None:
        super().__init__()
        self.config = cfg
        self.query_tokens_dict = nn.ParameterDict(
            {f"{s}x{s}": nn.Parameter(torch.empty(s * s, llm_hidden)) for s in cfg.scales}
        )
        self.proj_in = nn.Linear(llm_hidden, connector_hidden)
        self.proj_out = nn.Linear(connector_hidden, cfg.condition_dim)
        self.mlp = None if mlp_widths is None else ToClipMLP(cfg.condition_dim, *mlp_widths)

    def queries(self) -> torch.Tensor:
        """Every scale's query rows in order [Σ s², H]: what fills the query slots of the prompt."""
        return torch.cat([self.query_tokens_dict[f"{s}x{s}"] for s in self.config.scales])

    def caption(self, condition: torch.Tensor) -> torch.Tensor:
        """Condition [..., c] -> the DiT's caption features [..., D] (Z-Image: optional x1000 norm)."""
        if self.config.text_encoder_norm:
            condition = F.normalize(condition, dim=-1) * 1000
        return condition if self.mlp is None else self.mlp(condition)


class BidirectionalConnector(nn.Module):
    """transformers' Qwen2Model, causal masking off. Its input is `inputs_embeds`, so it has no token
    table: the checkpoint's embedding and lm_head (a causal-LM folder) are known keys, never read."""

    UNUSED_KEYS = ("model.embed_tokens.weight", "lm_head.weight")

    def __init__(self, config: dict) -> None:
        super().__init__()
        hf = Qwen2Config(**{**config, "vocab_size": 1})
        hf._attn_implementation = "sdpa"
        self.hf_config = hf
        self.model = Qwen2Model(hf)
        self.model.embed_tokens = None
        for layer in self.model.layers:
            layer.self_attn.is_causal = False

    def rebuild_rotary(self, device: torch.device) -> None:
        """The rotary table is a computed buffer: make it on `device` (after an empty build)."""
        self.model.rotary_emb = Qwen2RotaryEmbedding(self.hf_config).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, Q, C] -> the last hidden states [B, Q, C] (after the final norm)."""
        b, q, _ = x.shape
        everything = torch.ones(b, 1, q, q, dtype=torch.bool, device=x.device)  # (B, 1, Q, Q)
        return self.model(inputs_embeds=x, attention_mask=everything).last_hidden_state


def condition_from_queries(
    heads: GenerationHeads, connector: BidirectionalConnector, queries: torch.Tensor
) -> torch.Tensor:
    """The last scale's query hidden states [B, Q, H] -> the L2-normalised DiT condition [B, Q, c]."""
    x = heads.proj_in(queries.to(heads.proj_in.weight.dtype))  # (B, Q, C)
    x = connector(x)  # (B, Q, C)
    return F.normalize(heads.proj_out(x), dim=-1)  # (B, Q, c)
