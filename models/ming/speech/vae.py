"""Ming's AudioVAE (upstream `AudioVAE/modeling_audio_vae.py`, folder `talker/vae/`): the talker's
latent frames <-> waveform. Its module tree mirrors `model.safetensors` (`encoder.*`, `decoder.*`).

Public surface used by the service:
- `AudioVAE.load(folder, device, dtype)`: strict load (`vae_loading`);
- `decode_whole(latents (B, T, C)) -> wav (B, T * samples_per_latent)` float32;
- `start_stream()` -> `VAEStream`; `push(latents (B, t, C), last) -> wav (B, s)`: upstream's streaming
  decode (with patch_size != -1 the first push returns no samples and each later push returns the
  previous chunk's; `last` flushes); the concatenation has the whole decode's length and values (to
  float rounding);
- `encode_latent(wav (B, S), generator) -> latents (B, ceil(ceil(S / hop) / P), C)`: a draw from the
  encoder's Gaussian (upstream samples; `sample=False` gives the mean);
- `sample_rate`, `hop` (samples per decoder frame), `patch_size`, `samples_per_latent`.
Legend: B = batch, T = latent frames, C = latent width, S = samples, P = patch size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.autoencoders.autoencoder_oobleck import OobleckDiagonalGaussianDistribution
from torch import nn

from models.ming.speech.vae_config import AudioVAEConfig
from models.ming.speech.vae_decoder import DecoderStream, VAEDecoder
from models.ming.speech.vae_encoder import VAEEncoder


class VAEStream:
    """One streamed decode: push latent chunks in order; the last push says `last=True`."""

    def __init__(self, vae: AudioVAE) -> None:
        self._vae = vae
        self._state: DecoderStream = vae.decoder.start_stream()

    @property
    def finished(self) -> bool:
        return self._state.finished

    @torch.inference_mode()
    def push(self, latents: torch.Tensor, last: bool) -> torch.Tensor:
        """latents (B, t, C), t >= 0 -> the samples this chunk completes (B, s) float32: none on the
        first push, the previous chunk's on later ones, and everything left on the last."""
        return self._vae.decoder.decode_chunk(self._vae.as_latents(latents), self._state, last)


class AudioVAE(nn.Module):
    def __init__(self, cfg: AudioVAEConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = VAEEncoder(cfg)
        self.decoder = VAEDecoder(cfg)

    @classmethod
    def load(cls, folder: str | Path, device: torch.device, dtype: torch.dtype) -> AudioVAE:
        """A `talker/vae/` folder -> AudioVAE in eval mode on `device`, floats in `dtype`."""
        from models.ming.speech.vae_loading import load_vae

        return load_vae(folder, device, dtype)

    def rebuild_rotary(self, device: torch.device) -> None:
        self.encoder.rebuild_rotary(device)
        self.decoder.rebuild_rotary(device)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop(self) -> int:
        return self.config.hop

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def samples_per_latent(self) -> int:
        return self.config.samples_per_latent

    def as_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Checked (B, T, C) latents on the decoder's device and dtype."""
        if latents.dim() != 3 or latents.shape[-1] != self.config.latent_dim:
            raise ValueError(f"latents must be (B, T, {self.config.latent_dim}), got {tuple(latents.shape)}")
        weight = self.decoder.fc1.weight
        return latents.to(weight.device, weight.dtype)

    @torch.inference_mode()
    def decode_whole(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, T, C) -> waveform (B, T * samples_per_latent) float32."""
        return self.decoder.decode_whole(self.as_latents(latents))

    def start_stream(self) -> VAEStream:
        """A new streamed decode (upstream's `decode(use_cache=True)` with a fresh cache and state)."""
        return VAEStream(self)

    @torch.inference_mode()
    def posterior(self, wav: torch.Tensor) -> OobleckDiagonalGaussianDistribution:
        """wav (B, S) -> the latent Gaussian over (B, C, T) (diffusers' layout: channels first)."""
        if wav.dim() != 2 or wav.shape[-1] == 0:
            raise ValueError(f"wav must be (B, S) with S > 0, got {tuple(wav.shape)}")
        weight = self.encoder.fc1.weight
        params = self.encoder(wav.to(weight.device, weight.dtype))  # (B, T, 2C)
        return OobleckDiagonalGaussianDistribution(params.transpose(1, 2))  # (B, 2C, T)

    @torch.inference_mode()
    def encode_latent(
        self, wav: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """wav (B, S) at `sample_rate` -> latents (B, T, C): a draw (upstream) or the mean."""
        posterior = self.posterior(wav)
        latents = posterior.sample(generator) if sample else posterior.mode()  # (B, C, T)
        return latents.transpose(1, 2)
