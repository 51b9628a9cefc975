"""A speech segment's audio, decoded in the speech stage's thread as its patches come: latent patches ->
AudioVAE stream -> trimmed float samples.

Per segment: a fresh AudioVAE stream (as upstream, whose `tts_job` starts a new VAE cache per
segment: segments are independent, and the decoder's KV cache stays one segment long) is pushed the
patches gathered so far at fixed patch counts (`decode_point`: after 1, 2, 4 and 8 patches, then
every 8, and at the segment's end), so a request always yields the same chunks whatever the timing
or its neighbours; the first audio comes after 2 patches (the VAE's first push returns nothing: it
holds a frame of lookahead). The samples then go through the segment's `SilenceTrimmer`.
Why in the stage's thread: on a CPU, torch work in two threads at once (talker steps and decodes)
makes two OpenMP teams fight over the cores (the service ran 1.8x slower than a plain loop); the
encoding, Redis and events stay in the request's own thread.
"""

from __future__ import annotations

import numpy as np
import torch

from models.ming.speech.speech_model import SpeechModel
from models.ming.speech.vae import VAEStream
from pipelines.speech_silence import SilenceTrimmer

FIRST_DECODES = (1, 2, 4, 8)  # patch counts of a segment's first VAE pushes
DECODE_EVERY = 8  # ... then every this many patches


def decode_point(patches: int) -> bool:
    """Whether a segment's VAE stream is pushed once it has `patches` patches."""
    return patches in FIRST_DECODES or patches % DECODE_EVERY == 0


class SegmentAudio:
    """One segment: patches [P, C] -> VAE stream on the fixed schedule -> trimmed float samples."""

    def __init__(self, model: SpeechModel) -> None:
        self._stream: VAEStream = model.vae.start_stream()
        self._trimmer = SilenceTrimmer(model.sample_rate)
        self._waiting: list[torch.Tensor] = []
        self.patches = 0

    def add(self, latents: torch.Tensor, last: bool) -> np.ndarray | None:
        """Samples when this patch is a decode point (or the segment's last), else None."""
        self._waiting.append(latents)
        self.patches += 1
        if not (last or decode_point(self.patches)):
            return None
        chunk = torch.cat(self._waiting)[None]  # (1, t, C)
        self._waiting = []
        wav = self._stream.push(chunk, last)[0].float().cpu().numpy()  # (s,)
        return self._trimmer.push(wav, last)
