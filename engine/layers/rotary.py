"""Rotary position embedding (NeoX rotate-half) on the first `rotary_dim` channels of each head.

Legend: T = tokens, N = heads, D = head_dim, R = rotary_dim.
cos/sin are computed per call from the positions (cheap: T x R/2), in float32, scaled by the
attention factor (1.0 unless yarn), then cast to the activation dtype. Channels R..D pass through.
Multi-row positions (e.g. Ming's VideoRoPE: rows t, h, w) are positions [P, T] with a model-given
`row_of_freq` [R/2]: frequency j rotates by row `row_of_freq[j]`'s position (`set_position_rows`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.config import RopeConfig


def default_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    """inv_freq_j = theta^(-2j/R), j < R/2 (the exponent is over R, not D)."""
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_inv_freq(cfg: RopeConfig) -> tuple[torch.Tensor, float]:
    """YaRN: blend interpolated and extrapolated frequencies by wavelength; returns (inv_freq, mscale)."""
    s = cfg.scaling or {}
    dim, base = cfg.rotary_dim, cfg.theta
    factor = float(s["factor"])
    original = int(s.get("original_max_position_embeddings") or cfg.max_position)
    attn = s.get("attention_factor")
    if attn is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attn = _yarn_mscale(factor, m) / _yarn_mscale(factor, m_all) if m and m_all else _yarn_mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolated, interpolated = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1: keep the original (extrapolated) frequency
    return interpolated * (1 - keep) + extrapolated * keep, float(attn)


def rope_parameters(cfg: RopeConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq [R/2], attention scaling) for the configured rope type."""
    kind = None if cfg.scaling is None else (cfg.scaling.get("rope_type") or cfg.scaling.get("type"))
    if kind in (None, "default"):
        return default_inv_freq(cfg.rotary_dim, cfg.theta), 1.0
    if kind == "yarn":
        return yarn_inv_freq(cfg)
    raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: default, yarn)")


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: RopeConfig) -> None:
        super().__init__()
        self.rotary_dim = cfg.rotary_dim
        inv_freq, self.attention_scaling = rope_parameters(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.row_of_freq: torch.Tensor | None = None  # (R/2,) for multi-row positions

    def set_position_rows(self, row_of_freq: torch.Tensor) -> None:
        """Which row of [P, T] positions each of the R/2 frequencies uses (multi-row RoPE)."""
        if row_of_freq.shape != self.inv_freq.shape:
            raise ValueError(
                f"row_of_freq needs {self.inv_freq.shape[0]} entries, got {tuple(row_of_freq.shape)}"
            )
        self.row_of_freq = row_of_freq.long()

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] (or [P, T] with `set_position_rows`) -> cos, sin [T, R]."""
        inv_freq = self.inv_freq.to(positions.device)
        if positions.dim() == 2:
            if self.row_of_freq is None:
                raise ValueError("multi-row positions need set_position_rows() first")
            picked = positions.float()[self.row_of_freq.to(positions.device)]  # (R/2, T)
            freqs = picked.t() * inv_freq[None, :]  # (T, R/2)
        else:
            freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, R/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, R)
        scale = self.attention_scaling
        return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, N, D] -> x with its first R channels rotated."""
        r = self.rotary_dim
        rot, rest = x[..., :r], x[..., r:]
        x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]
        cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, R)
        rotated = rot * cos + torch.cat((-x2, x1), dim=-1) * sin
        return torch.cat((rotated, rest), dim=-1)
