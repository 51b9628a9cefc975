"""Ming's media encoders and projectors (checkpoint prefixes `vision.`, `audio.`, `linear_proj.`,
`linear_proj_audio.`): pixels -> Qwen2.5-VL ViT -> `linear_proj` -> L2-normalised image rows, and
log-mel frames -> Whisper encoder -> `linear_proj_audio` -> L2-normalised audio rows.

Legend: P = ViT patches (rows of pixel_values), N = merged image tokens = P / merge², C = ViT width,
A = audios, T = mel frames, T' = frames after conv2 (stride 2), L = audio tokens after the projector's
stride-2 conv, W = Whisper width (n_state), nh = heads, hs = head size, d = LLM hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from models.ming.config import MingAudioConfig, MingConfig, MingVisionConfig

ENCODER_PREFIXES = ("vision.", "audio.", "linear_proj.", "linear_proj_audio.")


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


def _hf_vision_config(cfg: MingVisionConfig, attn_implementation: str) -> Qwen2_5_VLVisionConfig:
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
    """The Preview ViT: transformers' Qwen2.5-VL vision transformer, whose parameter names are the
    checkpoint's `vision.*` names. `features(pixel_values [P, 3·t·p·p], grid_thw [I, 3]) -> [N, 8192]`.
    `attn_implementation`: "sdpa" (default) or "eager", its readable twin (transformers' names)."""

    def __init__(self, cfg: MingVisionConfig, attn_implementation: str = "sdpa") -> None:
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"vision attention must be 'sdpa' or 'eager', got {attn_implementation!r}")
        super().__init__(_hf_vision_config(cfg, attn_implementation))

    def features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        out = self(pixel_values.to(self.patch_embed.proj.weight.dtype), grid_thw=grid_thw)
        return out.pooler_output  # (N, out_hidden), merged units back in raster order


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

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(mel.transpose(1, 2)))  # (B, W, T)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', W)
        if x.shape[1] > self.n_ctx:
            raise ValueError(f"audio of {x.shape[1]} encoder frames exceeds n_ctx {self.n_ctx}")
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class Transpose(nn.Module):
    """Swap the last two dimensions (a parameter-free slot of `linear_proj_audio`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)


def image_projector(in_dim: int, hidden: int) -> nn.Sequential:
    """`linear_proj` (mlp_depth 2): Linear, GELU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))


def audio_projector(cfg: MingAudioConfig, hidden: int) -> nn.Sequential:
    """`linear_proj_audio` (mlp_depth 2): [B, W, T'] -> Conv1d(k, s) -> Transpose -> GELU -> Linear
    -> Transpose -> [B, d, L]."""
    k, s = cfg.ds_kernel_size, cfg.ds_stride
    conv = nn.Conv1d(cfg.n_state, hidden, kernel_size=k, stride=s, padding=k // 2)
    return nn.Sequential(conv, Transpose(), nn.GELU(), nn.Linear(hidden, hidden), Transpose())


class MingEncoders(nn.Module):
    """The four encoder-side checkpoint subtrees, and the two feature functions the thinker needs.

    `encode_images(pixel_values [P, 1176], grid_thw [I, 3]) -> [N, d]` (all images, in order) and
    `encode_audio(feats [A, T, n_mels], lengths [A]) -> [[L_i, d] for each audio]`, L2-normalised rows.
    """

    def __init__(self, cfg: MingConfig, vision_attn: str = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.llm.hidden_size
        self.vision = MingVision(cfg.vision, vision_attn)
        self.audio = WhisperAudioEncoder(cfg.audio)
        self.linear_proj = image_projector(cfg.vision.out_hidden_size, hidden)
        self.linear_proj_audio = audio_projector(cfg.audio, hidden)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        feats = self.vision.features(pixel_values, grid_thw)  # (N, 8192)
        return self._normalise(self.linear_proj(feats))  # (N, d)

    def encode_audio(self, feats: torch.Tensor, lengths: torch.Tensor | list[int]) -> list[torch.Tensor]:
        lengths = [int(n) for n in lengths]
        if feats.dim() != 3 or len(lengths) != feats.shape[0]:
            raise ValueError(f"audio feats {tuple(feats.shape)} do not match {len(lengths)} lengths")
        out = []
        for row, n in zip(feats, lengths, strict=True):
            if not 0 < n <= feats.shape[1]:
                raise ValueError(f"audio length {n} is outside 1..{feats.shape[1]}")
            mel = row[:n].unsqueeze(0).to(self.audio.conv1.weight.dtype)  # (1, T, n_mels)
            x = self.audio(mel).transpose(1, 2)  # (1, W, T')
            x = self.linear_proj_audio(x)[0].transpose(0, 1)  # (L, d)
            if self.cfg.audio.norm_query_embeds:
                x = self._normalise(x)
            out.append(x)
        return out
