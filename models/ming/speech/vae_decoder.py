"""The AudioVAE decoder (upstream `vae_modules.Decoder`, keys `decoder.*`): latent frames -> waveform.

Data flow: latents (B, T, C) -> `fc1` -> linear upsample x P in time (patch_size != -1) -> transformers'
causal `Qwen2Model` (`decoder.decoder.*`, full or sliding-window attention) -> `head` (ISTFT, hop
samples per frame). `decode_whole` runs it once; `decode_chunk` runs it chunk by chunk with a
`DecoderStream` carrying the upsample's held-back chunk, the backbone's KV cache and the ISTFT's
overlap buffers, as upstream's `low_level_reconstruct(use_cache=True)` does. The first chunk returns
no samples (upsample lookahead); later chunks return the previous one's samples; the last flushes.
Legend: B = batch, T = latent frames, C = latent width, P = patch size, L = decoder frames (T*P),
H = backbone hidden, S = samples (L*hop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache, Qwen2Model
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from models.ming.speech.istft import ISTFTHead, ISTFTStream
from models.ming.speech.vae_config import AudioVAEConfig
from models.ming.speech.vae_upsample import StreamingUpsample, UpsampleStream, upsample_linear


@dataclass
class DecoderStream:
    """Everything one streamed decode carries from chunk to chunk."""

    cache: DynamicCache
    istft: ISTFTStream
    upsample: UpsampleStream = field(default_factory=UpsampleStream)
    finished: bool = False


class VAEDecoder(nn.Module):
    def __init__(self, cfg: AudioVAEConfig) -> None:
        super().__init__()
        self.backbone_config = cfg.decoder.backbone_config()
        hidden = self.backbone_config.hidden_size
        self.decoder = Qwen2Model(self.backbone_config)
        self.fc1 = nn.Linear(cfg.decoder.latent_dim, hidden)
        self.head = ISTFTHead(hidden, n_fft=cfg.n_fft, hop=cfg.hop)
        self.patch_size = cfg.patch_size
        self.upsampling = StreamingUpsample(cfg.patch_size) if cfg.patch_size != -1 else None

    def rebuild_rotary(self, device: torch.device) -> None:
        """The backbone's rotary table is computed (not in the checkpoint): rebuilt after an empty build."""
        self.decoder.rotary_emb = Qwen2RotaryEmbedding(self.backbone_config).to(device)

    def upsample_whole(self, x: torch.Tensor) -> torch.Tensor:
        """fc1 output (B, T, H) -> (B, L, H)."""
        return upsample_linear(x, self.patch_size) if self.upsampling is not None else x

    def backbone_whole(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, H): one causal forward, no cache."""
        return self.decoder(inputs_embeds=x, use_cache=False).last_hidden_state

    def decode_whole(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, T, C) -> waveform (B, T*P*hop) float32."""
        x = self.upsample_whole(self.fc1(latents))  # (B, T, H) -> (B, L, H)
        return self.head(self.backbone_whole(x))

    def start_stream(self) -> DecoderStream:
        return DecoderStream(cache=DynamicCache(config=self.backbone_config), istft=self.head.istft.start())

    def _window_fill(self, x: torch.Tensor, cache: DynamicCache) -> list[torch.Tensor]:
        """Upstream's sliding-window "fill": while the cache holds fewer than window-1 frames and this
        chunk would cross the window, the frames up to window-1 run first, then the rest. (The result
        is the same attention either way; it is kept so the floating-point path is upstream's.)"""
        window = getattr(self.backbone_config, "sliding_window", None)
        if window is None:
            return [x]
        past, target = cache.get_seq_length(), window - 1
        if past < target and past + x.shape[1] >= window:
            split = target - past
            return [x[:, :split], x[:, split:]]
        return [x]

    def backbone_stream(self, x: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """(B, l, H) frames following those already in `cache` -> (B, l, H); positions continue from
        the cache length and attention sees the cached frames (transformers builds both)."""
        outs = [
            self.decoder(inputs_embeds=piece, cache=cache, use_cache=True).last_hidden_state
            for piece in self._window_fill(x, cache)
        ]
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    def decode_chunk(self, latents: torch.Tensor, state: DecoderStream, last: bool) -> torch.Tensor:
        """latents (B, t, C) of one chunk -> the samples completed by it (B, s) float32."""
        if state.finished:
            raise RuntimeError("this decode stream has already received its last chunk")
        state.finished = last
        x = self.fc1(latents)  # (B, t, H)
        if self.upsampling is not None:
            x = self.upsampling.push(x, state.upsample, last)  # (B, l, H), l = 0 on the first chunk
        if x.shape[1] == 0:
            if last and state.istft.audio_tail is not None:  # an empty last chunk flushes the tail
                return self.head.istft.stream(self.head.spectrum(x), state.istft, last=True)
            return latents.new_zeros(latents.shape[0], 0, dtype=torch.float32)
        return self.head.stream(self.backbone_stream(x, state.cache), state.istft, last)
