"""Ming's audio side (checkpoint prefixes `audio.`, `linear_proj_audio.`): log-mel frames -> a
Whisper-style encoder (openai-whisper's names; variable length, no 30 s padding, n_ctx sinusoidal
positions loaded from the checkpoint) -> `linear_proj_audio` (Conv1d k3 s2, GELU, Linear) -> [L, d];
the thinker L2-normalises the rows.

Legend: B = audios in a batch, T = mel frames, T' = frames after conv2 (stride 2), L = audio tokens
after the projector's stride-2 conv, W = Whisper width (n_state), nh = heads, hs = head size,
d = LLM hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.loader import WeightTarget
from models.ming.config import MingAudioConfig


def conv_out_length(length: int, kernel: int = 3, stride: int = 2, padding: int = 1) -> int:
    """Frames out of one Conv1d: (L + 2p - k) // s + 1."""
    return (length + 2 * padding - kernel) // stride + 1


def audio_encoder_lengths(length: int, ds_kernel: int = 3, ds_stride: int = 2) -> tuple[int, int]:
    """(T', L): mel frames after Whisper's conv2 (k3 s2 p1; conv1 keeps the length), then after the
    projector's Conv1d (k = ds_kernel_size, s = ds_stride, p = k // 2)."""
    frames = conv_out_length(length)
    return frames, conv_out_length(frames, ds_kernel, ds_stride, ds_kernel // 2)


def audio_token_count(length: int, ds_kernel: int = 3, ds_stride: int = 2) -> int:
    """Audio tokens for `length` mel frames; with the Preview's k3 s2 this is the spec's
    L_enc = ((L - 3 + 2)//2 + 1 - 3 + 2)//2 + 1 (150 frames -> 38)."""
    return audio_encoder_lengths(length, ds_kernel, ds_stride)[1]


class WhisperAttention(nn.Module):
    """Bidirectional multi-head attention; `key` has no bias (Whisper's layout)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, t, _ = x.shape  # (B, T', W)
        return tuple(
            p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.query, self.key, self.value)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)  # (B, nh, T', hs) each
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T', hs), scale 1/sqrt(hs)
        return self.out(y.transpose(1, 2).flatten(2))  # (B, T', W)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)  # (B, nh, T', hs) each
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, nh, T', T')
        y = scores.float().softmax(dim=-1).to(v.dtype) @ v  # (B, nh, T', hs)
        return self.out(y.transpose(1, 2).flatten(2))  # (B, T', W)


class WhisperBlock(nn.Module):
    """Pre-LN residual block: attention then a GELU MLP (`mlp.0`, `mlp.2`)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = WhisperAttention(width, heads)
        self.attn_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.mlp_ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperAudioEncoder(nn.Module):
    """Whisper's audio encoder with its checkpoint names. `forward(mel [B, T, n_mels]) -> [B, T', W]`;
    no attention mask, so call it with one unpadded audio per row (or equal lengths)."""

    def __init__(self, cfg: MingAudioConfig) -> None:
        super().__init__()
        w = cfg.n_state
        self.n_ctx = cfg.n_ctx
        self.conv1 = nn.Conv1d(cfg.n_mels, w, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(w, w, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.zeros(cfg.n_ctx, w))  # persistent, loaded
        self.blocks = nn.ModuleList(WhisperBlock(w, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_post = nn.LayerNorm(w)

    def weight_targets(self, prefix: str) -> dict[str, WeightTarget]:
        """Every parameter plus the persistent `positional_embedding` buffer (the checkpoint has it)."""
        tensors = dict(self.named_parameters())
        tensors["positional_embedding"] = self.positional_embedding
        return {f"{prefix}.{k}": WeightTarget(t.data, tuple(t.shape)) for k, t in tensors.items()}

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(mel.transpose(1, 2)))  # (B, W, T)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', W)
        if x.shape[1] > self.n_ctx:
            raise ValueError(f"audio of {x.shape[1]} encoder frames exceeds n_ctx {self.n_ctx}")
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class Transpose(nn.Module):
    """Swap the last two dimensions (a parameter-free slot of `linear_proj_audio`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)


def audio_projector(cfg: MingAudioConfig, hidden: int) -> nn.Sequential:
    """`linear_proj_audio` (mlp_depth 2): [B, W, T'] -> Conv1d(k, s) -> Transpose -> GELU -> Linear
    -> Transpose -> [B, d, L]."""
    k, s = cfg.ds_kernel_size, cfg.ds_stride
    conv = nn.Conv1d(cfg.n_state, hidden, kernel_size=k, stride=s, padding=k // 2)
    return nn.Sequential(conv, Transpose(), nn.GELU(), nn.Linear(hidden, hidden), Transpose())
