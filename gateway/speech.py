"""The protobuf boundary of speech synthesis, request side: SynthesizeSpeechRequest -> GenerateJob(task=
"speech"), and a GenerateRequest with `speech` set -> a chat job whose reply is also spoken.

A speech job is one user message: (cloning) the speaker clip as an audio part, then the text to say.
Every error is INVALID_ARGUMENT naming the field ("speed must be in [0.5, 2], got 3"; a chat request's
are "speech.speed ..."). The ranges mirror the worker's checks (pipelines/speech_synthesis.py, torch
side), so a request the worker would refuse is refused before it is queued.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gateway.api import pb
from gateway.config import GatewayConfig
from gateway.convert import check_model, check_request_id, request_to_job
from gateway.errors import invalid
from gateway.media import MediaBlob, MediaError, check_media
from gateway.state import ModelState
from pipelines.protocol import AUDIO_FORMATS, ChatMessage, GenerateJob, MediaRef, Part, SpeechOptions

MIN_SPEED, MAX_SPEED = 0.5, 2.0
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 48000
# the rates the worker resamples to (pipelines/speech_synthesis.py), and those libopus encodes
SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MAX_TEMPERATURE = 2.0
MAX_GUIDANCE = 20.0
INT64_MAX = 2**63 - 1


# ---- SynthesizeSpeechRequest -> job ------------------------------------------------------------
def speech_request_to_job(
    req: pb.SynthesizeSpeechRequest,
    cfg: GatewayConfig,
    state: ModelState | None,
    *,
    submitted_at: float,
    deadline: float | None = None,
) -> tuple[GenerateJob, list[MediaBlob]]:
    """Validate `req` into a speech job plus its speaker clip's bytes; `state` None skips live checks."""
    check_model(req.model, cfg.models)
    request_id = check_request_id(req.request_id)
    check_speaks(req.model, state)
    if not req.text.strip():
        raise invalid("text is empty: send the text to speak")
    check_length("text", req.text, cfg.max_speech_text_chars)
    parts = [Part(type="text", text=req.text)]
    blobs: list[MediaBlob] = []
    if req.speaker_audio.data:  # before the text, as image editing puts its reference image
        parts.insert(0, _speaker_clip(req, cfg, blobs))
    elif req.speaker_audio.mime_type:
        raise invalid(
            "speaker_audio.data is empty: send the bytes of the clip to clone (WAV, FLAC, OGG, MP3)"
        )
    elif req.speaker_text:
        raise invalid("speaker_text is what speaker_audio says, and speaker_audio is empty: send the clip")
    check_length("speaker_text", req.speaker_text, cfg.max_speech_text_chars)
    job = GenerateJob(
        request_id=request_id,
        model=req.model,
        messages=(ChatMessage(role="user", parts=tuple(parts)),),
        task="speech",
        speech=speech_options(req, "", cfg, state, speaker_text=req.speaker_text),
        priority=req.priority,
        deadline=deadline,
        submitted_at=submitted_at,
    )
    return job, blobs


def _speaker_clip(req: pb.SynthesizeSpeechRequest, cfg: GatewayConfig, blobs: list[MediaBlob]) -> Part:
    """The clip to clone as an audio part, its bytes appended to `blobs` (the model need not accept
    audio input: the talker encodes the clip itself)."""
    if req.voice:
        raise invalid(
            f"voice and speaker_audio are both set: use a preset voice ({req.voice!r}) or clone the clip, "
            "not both"
        )
    data, limit = req.speaker_audio.data, cfg.max_speaker_audio_bytes
    if len(data) > limit:
        raise invalid(
            f"speaker_audio is {len(data)} bytes, at most {limit} are allowed (max_speaker_audio_bytes)"
        )
    try:
        mime = check_media("audio", data, req.speaker_audio.mime_type, limit)
    except MediaError as exc:
        raise invalid(f"speaker_audio: {exc}") from None
    blob = MediaBlob.of(data)
    blobs.append(blob)
    return Part(type="audio", media=MediaRef(kind="audio", key=blob.key, mime_type=mime, size=len(data)))


# ---- GenerateRequest.speech -> a spoken chat job ------------------------------------------------
def chat_request_to_job(
    req: pb.GenerateRequest,
    cfg: GatewayConfig,
    state: ModelState | None,
    *,
    submitted_at: float,
    deadline: float | None = None,
) -> tuple[GenerateJob, list[MediaBlob]]:
    """`convert.request_to_job`, plus the speech options of a reply that is also spoken."""
    job, blobs = request_to_job(req, cfg, state, submitted_at=submitted_at, deadline=deadline)
    if not req.HasField("speech"):
        return job, blobs
    check_speaks(req.model, state)
    if job.sampling.n != 1:
        raise invalid(f"sampling.n must be 1 for a spoken reply (one voice per answer), got {job.sampling.n}")
    return dataclasses.replace(job, speech=speech_options(req.speech, "speech.", cfg, state)), blobs


# ---- shared checks ------------------------------------------------------------------------------
def check_speaks(model: str, state: ModelState | None) -> None:
    if state is not None and "audio" not in state.outputs:
        produces = ", ".join(state.outputs) or "none"
        raise invalid(f"model {model!r} does not synthesize speech (outputs: {produces})")


def check_length(name: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise invalid(
            f"{name} is {len(text)} characters, at most {limit} are allowed (max_speech_text_chars)"
        )


def speech_options(
    msg: Any, prefix: str, cfg: GatewayConfig, state: ModelState | None, *, speaker_text: str = ""
) -> SpeechOptions:
    """The speech fields of `msg` (a SynthesizeSpeechRequest or a chat's SpeechOptions: same names),
    checked; errors name `prefix + field`. Unset fields stay None / "" (the model's defaults)."""
    fmt = msg.format.strip().lower() or "wav"
    if fmt not in AUDIO_FORMATS:
        raise invalid(f"{prefix}format must be one of {', '.join(AUDIO_FORMATS)}, got {msg.format!r}")
    _voice(msg.voice, prefix, state)
    check_length(f"{prefix}instruction", msg.instruction, cfg.max_speech_text_chars)
    return SpeechOptions(
        voice=msg.voice,
        speaker_text=speaker_text,
        speed=_real(msg, "speed", prefix, MIN_SPEED, MAX_SPEED),
        sample_rate=_sample_rate(msg, prefix, fmt),
        format=fmt,
        seed=_seed(msg, prefix),
        temperature=_real(msg, "temperature", prefix, 0.0, MAX_TEMPERATURE),
        guidance_scale=_real(msg, "guidance_scale", prefix, 0.0, MAX_GUIDANCE),
        instruction=msg.instruction,
    )


def _voice(voice: str, prefix: str, state: ModelState | None) -> None:
    if not voice or state is None or not state.voices:  # workers that announce no presets: theirs to check
        return
    if voice not in state.voices:
        raise invalid(
            f"{prefix}voice {voice!r} is not a voice of model {state.name!r} "
            f"(voices: {', '.join(state.voices)})"
        )


def _real(msg: Any, name: str, prefix: str, low: float, high: float) -> float | None:
    if not msg.HasField(name):
        return None
    value = getattr(msg, name)
    if not (math.isfinite(value) and low <= value <= high):  # NaN fails too
        raise invalid(f"{prefix}{name} must be in [{low:g}, {high:g}], got {value:g}")
    return value


def _sample_rate(msg: Any, prefix: str, fmt: str) -> int | None:
    if not msg.HasField("sample_rate"):
        return None
    rate = msg.sample_rate
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise invalid(f"{prefix}sample_rate must be in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz, got {rate}")
    allowed = OPUS_RATES if fmt == "opus" else SAMPLE_RATES
    if rate not in allowed:
        where = " for format opus" if fmt == "opus" else ""
        raise invalid(f"{prefix}sample_rate must be one of {', '.join(map(str, allowed))}{where}, got {rate}")
    return rate


def _seed(msg: Any, prefix: str) -> int | None:
    if not msg.HasField("seed"):
        return None
    if msg.seed < 0:
        raise invalid(f"{prefix}seed must be in [0, {INT64_MAX}], got {msg.seed}")
    return msg.seed
