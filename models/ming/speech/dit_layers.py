"""The building blocks shared by the talker's flow DiT and its aggregator (upstream
`talker_module/modules.py` + x_transformers' rotary embedding): RMSNorm, interleaved-pair RoPE,
bidirectional attention, tanh-GELU feed-forward, the pre-norm block and the final projection.

Legend: N = sequences (2B under classifier-free guidance), L = tokens, D = block width,
h = heads, d = head width (D / h), F = feed-forward width.
RoPE is x_transformers' (GPT-J style): frequencies repeat per ADJACENT pair [f0, f0, f1, f1, ...] and a
pair rotates as (x0, x1) -> (-x1, x0); NOT NeoX's rotate-half. Positions run 0..L-1 over the whole
sequence; the inverse frequencies are a buffer the checkpoint holds (`rotary_embed.inv_freq`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.ming.speech.talker_config import BlockStackConfig

ROPE_THETA = 10000.0  # x_transformers RotaryEmbedding default
NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x²) + eps) * weight (F.rms_norm: upstream's path on torch >= 2.4)."""

    def __init__(self, dim: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return F.rms_norm(x, (x.shape[-1],), weight=self.weight, eps=self.eps)


def rope_inv_freq(head_dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """1 / theta^(2i / d) for i < d/2, float32 [d/2]: what the checkpoint's `inv_freq` buffers hold."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))


class RotaryEmbedding(nn.Module):
    """Rotation angles per position, pairs interleaved. Computed in the buffer's dtype, as
    x_transformers does (a bf16 model rotates with bf16 angles)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(head_dim))  # persistent: in the checkpoint

    def forward(self, seq_len: int) -> torch.Tensor:
        """Angles [L, d] for positions 0..L-1."""
        pos = torch.arange(seq_len, device=self.inv_freq.device).to(self.inv_freq.dtype)
        freqs = pos[:, None] * self.inv_freq[None, :]  # (L, d/2)
        return torch.stack((freqs, freqs), dim=-1).flatten(-2)  # (L, d/2, 2) -> (L, d)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) over the last dim."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., d/2, 2)
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (..., d)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x [N, h, L, d] rotated by angles [L, d] (interleaved pairs); keeps x's dtype."""
    out = x * angles.cos() + rotate_pairs(x) * angles.sin()
    return out.to(x.dtype)


class Attention(nn.Module):
    """Full bidirectional multi-head attention with RoPE on q and k (optionally only the first
    `pe_attn_head` heads) and optional per-head RMSNorm on q and k."""

    def __init__(self, cfg: BlockStackConfig) -> None:
        super().__init__()
        dim = cfg.hidden_size
        self.heads, self.pe_heads = cfg.num_heads, cfg.pe_attn_head
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        rms = cfg.qk_norm == "rms_norm"
        self.q_norm = RMSNorm(cfg.head_dim) if rms else None
        self.k_norm = RMSNorm(cfg.head_dim) if rms else None
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # upstream: [Linear, Dropout]

    def _rope(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        if self.pe_heads is None:
            return apply_rope(x, angles)
        n = self.pe_heads
        return torch.cat([apply_rope(x[:, :n], angles), x[:, n:]], dim=1)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """x [N, L, D], angles [L, d] -> [N, L, D]."""
        n, length, dim = x.shape
        q, k, v = (
            p(x).view(n, length, self.heads, -1).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v)
        )
        # q, k, v: (N, L, D) -> (N, L, h, d) -> (N, h, L, d)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self._rope(q, angles), self._rope(k, angles)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, h, L, d)
        out = out.transpose(1, 2).reshape(n, length, dim)  # (N, L, h, d) -> (N, L, D)
        return self.to_out[0](out)


class FeedForward(nn.Module):
    """Linear(D -> F) -> tanh-GELU -> Linear(F -> D); names as upstream's `ff.0.0` / `ff.2`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        # upstream: Sequential(Sequential(Linear, GELU), Dropout, Linear); the dropout is inert here
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh")),
            nn.Identity(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiTBlock(nn.Module):
    """Pre-RMSNorm residual block: x + attn(norm1(x)), then x + mlp(norm2(x)). No adaLN (upstream's
    docstring says otherwise; its code has none)."""

    def __init__(self, cfg: BlockStackConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.hidden_size)
        self.mlp = FeedForward(cfg.hidden_size, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), angles)
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """RMSNorm -> Linear(D -> out)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.norm_final = RMSNorm(dim)
        self.linear = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm_final(x))


class BlockStack(nn.Module):
    """x_embedder-free core shared by the DiT and the aggregator: RoPE angles, then the blocks."""

    def __init__(self, cfg: BlockStackConfig) -> None:
        super().__init__()
        self.rotary_embed = RotaryEmbedding(cfg.head_dim)
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, D] -> [N, L, D], RoPE positions 0..L-1."""
        angles = self.rotary_embed(x.shape[1])  # (L, d)
        for block in self.blocks:
            x = block(x, angles)
        return x
