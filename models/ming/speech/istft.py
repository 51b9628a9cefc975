"""The AudioVAE decoder's Vocos-style ISTFT head (upstream `AudioVAE/istft.py`, keys `decoder.head.out.*`
and `decoder.head.istft.window`): hidden frames -> log-magnitude + phase -> complex spectrum -> inverse
STFT with "same" padding, over a whole sequence or chunk by chunk with carried overlap buffers.

"Same" padding: the overlap-added signal of L frames, (L-1)*hop + N samples, loses pad = (N-hop)/2
samples at both ends, leaving exactly L*hop, and is divided by the overlap-added squared window.
`torch.istft` cannot do this: with center=False its NOLA check fails on the hann window's zero first
sample (pytorch issue 62323); with center=True it trims N/2 instead of pad. Its output is therefore
the interior of ours, which is what the tests compare.
Legend: B = batch, L = decoder frames, D = hidden, F = N/2+1 frequency bins, N = n_fft = window
length, S = samples, O = N - hop (overlap carried between chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAX_MAGNITUDE = 1e2  # upstream's clip on exp(log-magnitude)


@dataclass
class ISTFTStream:
    """Between chunks: the overlap-added tails not yet complete (audio and window envelope), and how
    many leading samples of the stream are still to be trimmed ("same" padding)."""

    to_trim: int
    audio_tail: torch.Tensor | None = None  # (B, O)
    envelope_tail: torch.Tensor | None = None  # (O,)


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding; `window` (periodic hann, N) is a checkpoint buffer."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        if hop > n_fft:
            raise ValueError(f"hop {hop} exceeds n_fft {n_fft}")
        self.n_fft, self.hop = n_fft, hop
        self.pad = (n_fft - hop) // 2
        self.overlap = n_fft - hop
        self.register_buffer("window", torch.hann_window(n_fft))

    def _fold(self, frames: torch.Tensor) -> torch.Tensor:
        """Overlap-add frames (B, N, L) at stride hop -> (B, (L-1)*hop + N)."""
        size = (frames.shape[-1] - 1) * self.hop + self.n_fft
        out = F.fold(frames, output_size=(1, size), kernel_size=(1, self.n_fft), stride=(1, self.hop))
        return out[:, 0, 0]  # (B, 1, 1, S) -> (B, S)

    def overlap_add(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """spec (B, F, L) complex -> (overlap-added windowed frames (B, S), squared-window envelope (S,))."""
        window = self.window.float()
        frames = (
            torch.fft.irfft(spec, n=self.n_fft, dim=1, norm="backward") * window[None, :, None]
        )  # (B, N, L)
        squares = window.square()[None, :, None].expand(1, -1, spec.shape[-1])  # (1, N, L)
        return self._fold(frames), self._fold(squares)[0]

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """A whole sequence: spec (B, F, L) complex -> waveform (B, L*hop)."""
        audio, envelope = self.overlap_add(spec)
        end = audio.shape[-1] - self.pad
        return audio[:, self.pad : end] / envelope[self.pad : end]

    def start(self) -> ISTFTStream:
        return ISTFTStream(to_trim=self.pad)

    def stream(self, spec: torch.Tensor, state: ISTFTStream, last: bool) -> torch.Tensor:
        """One chunk: spec (B, F, L) -> the samples completed so far (B, s).

        Each chunk completes L*hop samples and holds back its last O (they still receive the next
        chunk's overlap); the first `pad` samples of the stream are trimmed, and the last chunk
        releases its tail minus `pad`. The concatenation equals `forward` on the whole spectrum.
        """
        if spec.shape[-1]:
            audio, envelope = self.overlap_add(spec)  # (B, L*hop + O), (L*hop + O,)
        else:  # an empty (last) chunk: only the held tail completes
            audio = spec.real.new_zeros(spec.shape[0], self.overlap)  # (B, O)
            envelope = audio.new_zeros(self.overlap)  # (O,)
        if state.audio_tail is not None:
            audio[:, : self.overlap] += state.audio_tail
            envelope[: self.overlap] += state.envelope_tail
        end = audio.shape[-1] - (self.pad if last else self.overlap)
        state.audio_tail, state.envelope_tail = audio[:, -self.overlap :], envelope[-self.overlap :]
        start = min(state.to_trim, end)
        state.to_trim -= start
        return audio[:, start:end] / envelope[start:end]


class ISTFTHead(nn.Module):
    """Linear(D -> 2F) predicting log-magnitude and phase per frame, then the ISTFT."""

    def __init__(self, dim: int, n_fft: int, hop: int) -> None:
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop)

    def spectrum(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, D) -> complex spectrum (B, F, L), computed in float32."""
        x = self.out(hidden).float().transpose(1, 2)  # (B, L, 2F) -> (B, 2F, L)
        log_magnitude, phase = x.chunk(2, dim=1)  # (B, F, L) each
        magnitude = log_magnitude.exp().clip(max=MAX_MAGNITUDE)
        # real and imaginary parts as upstream forms them (torch.polar's sin/cos round differently)
        return torch.complex(magnitude * phase.cos(), magnitude * phase.sin())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, D) -> waveform (B, L*hop) float32."""
        return self.istft(self.spectrum(hidden))

    def stream(self, hidden: torch.Tensor, state: ISTFTStream, last: bool) -> torch.Tensor:
        """One chunk of hidden frames (B, L, D) -> completed samples (B, s) float32."""
        return self.istft.stream(self.spectrum(hidden), state, last)
