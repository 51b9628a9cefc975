"""The audio half of a speech request, in the thread that reads its ticket: the samples the speech
stage decoded (`speech_decode`) -> encoded chunks -> bytes parked in Redis -> AUDIO events.

The samples go through the request's `AudioEncoder` (one stream over all segments: tempo, resample,
format) and out as chunk `index` (a running count over the request) under `audio_key`, TTL
IMAGE_TTL_S. A chunk that encodes to no bytes (held in the encoder) carries its duration over to the
next one. At the end the encoder is flushed (the tail of an Ogg stream, say).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.ming.speech.speech_model import SpeechModel
from pipelines.audio_output import AudioEncoder
from pipelines.protocol import IMAGE_TTL_S, AudioChunkInfo, EventType, SpeechSummary, audio_key
from pipelines.speech_synthesis import SpeechSettings
from workers.emitter import Control
from workers.speech_stage import PatchOut, SpeechTicket

POLL_S = 0.05  # how often a waiting speech request looks at its deadline


@dataclass
class SpeechOutlet:
    """Where one request's audio goes: encoder -> Redis (bytes) -> emitter (AUDIO events)."""

    request_id: str
    redis: Any
    emitter: Any  # workers.emitter.Emitter
    settings: SpeechSettings
    model_rate: int
    allowed: Callable[[], bool] = lambda: True  # False once the request was cancelled: publish no more
    on_first: Callable[[], None] = lambda: None
    chunks: int = 0
    seconds: float = 0.0  # audio out, published
    _pending_samples: int = 0
    _encoder: AudioEncoder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        self._encoder = AudioEncoder(self.model_rate, s.sample_rate, s.format, s.speed)

    def write(self, samples: np.ndarray, text: str, last: bool = False) -> None:
        encoded = self._encoder.encode(samples, last)
        self._pending_samples += encoded.samples
        if not encoded.data or not self.allowed():
            return
        rate = self.settings.sample_rate
        index, key = self.chunks, audio_key(self.request_id, self.chunks)
        self.redis.set(key, encoded.data, ex=IMAGE_TTL_S)
        duration = self._pending_samples / rate
        info = AudioChunkInfo(index, key, rate, self.seconds, duration, len(encoded.data), text)
        self.emitter.put(Control(self.request_id, EventType.AUDIO, {"info": info.to_info()}))
        if index == 0:
            self.on_first()
        self.chunks += 1
        self.seconds += duration
        self._pending_samples = 0


@dataclass(frozen=True)
class SpokenResult:
    """How a ticket's audio ended (None from `speak` instead: stopped)."""

    summary: SpeechSummary
    finish_reason: str  # "stop", or "length" when the audio budget cut the text short
    prompt_tokens: int
    patches: int


def speak(
    ticket: SpeechTicket,
    model: SpeechModel,
    outlet: SpeechOutlet,
    waiting: Callable[[], None] = lambda: None,
) -> SpokenResult | None:
    """Read the ticket's patches until it ends, publishing audio; None when it was stopped.
    A failed talker step raises RuntimeError."""
    text = ""
    while True:
        waiting()  # the deadline: checked whether patches flow or not
        try:
            item: PatchOut | None = ticket.out.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if item is None:
            break
        text = item.segment.text
        if item.samples is not None:
            outlet.write(item.samples, text)
    if ticket.outcome == "failed":
        raise RuntimeError(f"the talker failed: {ticket.error}")
    if ticket.outcome != "finished":
        return None
    outlet.write(np.zeros(0, np.float32), text, last=True)  # flush the encoder
    s = outlet.settings
    summary = SpeechSummary(
        sample_rate=s.sample_rate,
        duration_s=round(outlet.seconds, 6),
        format=s.format,
        seed=s.seed,
        chunks=outlet.chunks,
        latent_frames=ticket.steps * model.talker.config.patch_size,
    )
    reason = "length" if ticket.truncated else "stop"
    return SpokenResult(summary, reason, ticket.prompt_tokens, ticket.steps)
