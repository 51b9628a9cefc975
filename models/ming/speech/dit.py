"""The talker's flow-matching DiT (upstream `talker_module/dit.py`, keys `cfm.model.*`): predicts the
velocity of a latent patch given the ODE time, the backbone's hidden state and the latent history.

Sequence: [y, history(Hp), x(P)] with y = t_embedder(t) + c_embedder(h) (one condition token); the
blocks attend bidirectionally with RoPE over positions 0..Hp+P; the output keeps the last P positions.
Legend: N = rows (2B under CFG), B = requests, P = patch frames, Hp = history frames, C = latent width
(64), D = DiT width, H = backbone hidden, S = sinusoid width (256).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.ming.speech.dit_layers import BlockStack, FinalLayer
from models.ming.speech.talker_config import BlockStackConfig

TIME_FREQ_DIM = 256  # upstream TimestepEmbedder(freq_embed_dim=256)
TIME_SCALE = 1000.0  # upstream SinusPositionEmbedding.forward(scale=1000)


def time_sinusoid(t: torch.Tensor, dim: int = TIME_FREQ_DIM, scale: float = TIME_SCALE) -> torch.Tensor:
    """t [N] in [0, 1] -> [sin, cos] features [N, S] with freq_j = exp(-j ln(10000) / (S/2 - 1))."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -step)  # (S/2,)
    angles = scale * t[:, None] * freqs[None, :]  # (N, S/2)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoid of the ODE time -> Linear -> SiLU -> Linear (keys `t_embedder.time_mlp.{0,2}`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [N] -> [N, D]."""
        return self.time_mlp(time_sinusoid(t).to(t.dtype))


class CondEmbedder(nn.Module):
    """The backbone hidden state -> the DiT width (keys `c_embedder.cond_embedder.*`; the training-time
    condition dropout of upstream does not exist at inference)."""

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.cond_embedder = nn.Linear(cond_dim, dim)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.cond_embedder(c)


class DiT(BlockStack):
    """Velocity model over [condition token, history, noisy patch]."""

    def __init__(self, cfg: BlockStackConfig) -> None:
        super().__init__(cfg)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.x_embedder = nn.Linear(cfg.in_channels, cfg.hidden_size)
        self.c_embedder = CondEmbedder(cfg.llm_cond_dim, cfg.hidden_size)
        self.final_layer = FinalLayer(cfg.hidden_size, cfg.in_channels)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        """x [N, P, C], t [N], c [N, 1, H], history [N, Hp, C] -> velocity for every token [N, 1+Hp+P, C]."""
        tokens = self.x_embedder(torch.cat([history, x], dim=1))  # (N, Hp+P, D)
        y = self.t_embedder(t).unsqueeze(1) + self.c_embedder(c)  # (N, 1, D)
        out = self.run_blocks(torch.cat([y, tokens], dim=1))  # (N, 1+Hp+P, D)
        return self.final_layer(out)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        """Conditional and unconditional rows in one batch: [cond; uncond] velocities [2B, P, C].

        x [B, P, C], t [] or [B], c [B, 1, H], history [B, Hp, C]; the unconditional half has c = 0 and
        the same x and history.
        """
        x2 = torch.cat([x, x], dim=0)  # (2B, P, C)
        history2 = torch.cat([history, history], dim=0)  # (2B, Hp, C)
        c2 = torch.cat([c, torch.zeros_like(c)], dim=0)  # (2B, 1, H)
        t2 = t.repeat(x2.shape[0]) if t.ndim == 0 else torch.cat([t, t], dim=0)  # (2B,)
        return self.forward(x2, t2, c2, history2)[:, -x.shape[1] :]
