"""The AudioVAE encoder (upstream `vae_modules.Encoder`, keys `encoder.*`): waveform -> the parameters
of a diagonal Gaussian over latent frames. Used for prompt wavs (voice cloning), never in streaming.

Data flow: waveform (B, S) -> frames of `input_dim` samples every `hop_size` (zero-padded on the
right) -> `fc1` (no bias) -> `fc2` -> transformers' causal `Qwen2Model` (`encoder.encoder.*`) -> with
patch_size P != -1: frames padded to a multiple of P, a learned CLS appended after every patch, a
second causal 4-layer `Qwen2Model` (`encoder.aggregator.*`) over the whole sequence, each patch's CLS
output kept -> `fc3` -> (B, T, 2C): mean and scale of diffusers' `OobleckDiagonalGaussianDistribution`.
`encoder.norm` (LayerNorm) is in the checkpoint but upstream's forward never uses it.

Upstream quirk kept: at P != -1 upstream sets `num_hidden_layers = 4` on the config object its encoder
backbone shares, and transformers' Qwen2Model runs `layers[:config.num_hidden_layers]`, so only the
first 4 encoder layers run (all are loaded).
Legend: B = batch, S = samples, K = frames, I = samples per frame, H = hidden, P = patch size,
N = patches, T = latent frames (N at P != -1, else K), C = latent width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Model
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from models.ming.speech.vae_config import ENCODER_AGGREGATOR_LAYERS, AudioVAEConfig


class VAEEncoder(nn.Module):
    def __init__(self, cfg: AudioVAEConfig) -> None:
        super().__init__()
        enc = cfg.encoder
        self.input_dim, self.hop_size, self.patch_size = enc.input_dim, enc.hop_size, cfg.patch_size
        self.backbone_config = enc.backbone_config()
        hidden = self.backbone_config.hidden_size
        self.encoder = Qwen2Model(self.backbone_config)
        self.fc1 = nn.Linear(enc.input_dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 2 * enc.latent_dim)
        self.norm = nn.LayerNorm(hidden)  # checkpoint only
        self.aggregator_config = enc.aggregator_config() if cfg.patch_size != -1 else None
        if self.aggregator_config is not None:
            self.aggregator = Qwen2Model(self.aggregator_config)
            self.cls_embed = nn.Parameter(torch.zeros(1, 1, hidden))
            self.encoder.config.num_hidden_layers = ENCODER_AGGREGATOR_LAYERS  # the upstream quirk above

    def rebuild_rotary(self, device: torch.device) -> None:
        """The backbones' rotary tables are computed (not in the checkpoint)."""
        self.encoder.rotary_emb = Qwen2RotaryEmbedding(self.backbone_config).to(device)
        if self.aggregator_config is not None:
            self.aggregator.rotary_emb = Qwen2RotaryEmbedding(self.aggregator_config).to(device)

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) -> frames (B, K, I), K = ceil(S / hop), the tail zero-padded."""
        count = -(-wav.shape[-1] // self.hop_size)
        needed = (count - 1) * self.hop_size + self.input_dim
        wav = F.pad(wav, (0, needed - wav.shape[-1]))
        return wav.unfold(-1, self.input_dim, self.hop_size)  # (B, K, I)

    def pool_patches(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, K, H) -> one vector per patch of P frames (B, N, H), N = ceil(K / P)."""
        batch, count, hidden = x.shape
        x = F.pad(x, (0, 0, 0, -count % self.patch_size))  # (B, N*P, H)
        x = x.reshape(batch, -1, self.patch_size, hidden)  # (B, N, P, H)
        cls = self.cls_embed.to(x.dtype).expand(batch, x.shape[1], 1, hidden)  # (B, N, 1, H)
        x = torch.cat([x, cls], dim=2).reshape(batch, -1, hidden)  # (B, N*(P+1), H)
        x = self.aggregator(inputs_embeds=x, use_cache=False).last_hidden_state
        return x.reshape(batch, -1, self.patch_size + 1, hidden)[:, :, -1]  # (B, N, P+1, H) -> (B, N, H)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) -> Gaussian parameters (B, T, 2C): [mean | scale] on the last axis."""
        x = self.fc2(self.fc1(self.frames(wav)))  # (B, K, H)
        x = self.encoder(inputs_embeds=x, use_cache=False).last_hidden_state
        if self.aggregator_config is not None:
            x = self.pool_patches(x)  # (B, N, H)
        return self.fc3(x)
