"""Speech-synthesis pipeline (torch side): a GenerateJob(task="speech") -> what the speech stage needs.

Flow: the job's one user message (its text = what to say; an audio part = the speaker clip to clone,
with `speaker_text` its transcript) -> the text checked and cut into segments (`speech_text`) -> the
voice: a preset by name, the clip registered through the model (`SpeechModel.voice_from_clip`), or
the model's default -> the client's options over upstream's defaults (flow CFG 2.0, temperature 0,
a random seed that is reported back), checked against the operator's `SpeechLimits`. A chat reply
spoken as it is written takes `settings` alone (its text arrives later). Every client mistake raises
RequestError naming the request field.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import torch

from engine.errors import RequestError
from models.ming.processing.audio import AudioConfig, decode_audio
from models.ming.speech.cfm import FlowSampling
from models.ming.speech.speech_model import SpeechModel
from models.ming.speech.voices import RegisteredVoice
from pipelines.audio_output import MAX_SPEED, MIN_SPEED, OPUS_FALLBACK_RATE, OPUS_RATES
from pipelines.media import FetchMedia
from pipelines.protocol import AUDIO_FORMATS, GenerateJob, MediaRef, SpeechOptions
from pipelines.speech_text import segments

SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 20.0
MAX_TEMPERATURE = 2.0
DEFAULT_GUIDANCE = 2.0  # upstream cfg
DEFAULT_TEMPERATURE = 0.0  # upstream: the deterministic ODE
SIGMA = 0.25  # upstream's SDE kick scale (not a client option)
CLIP = "speaker_audio"  # how errors name the speaker clip (the gateway's request field)


@dataclass(frozen=True)
class SpeechLimits:
    """An operator's limits (worker flags)."""

    max_text_chars: int = 2000
    max_audio_seconds: float = 120.0  # of audio out, per request
    min_clip_seconds: float = 1.0
    max_clip_seconds: float = 30.0
    max_clip_bytes: int = 16 * 2**20

    def __post_init__(self) -> None:
        if not 0 < self.min_clip_seconds <= self.max_clip_seconds:
            raise ValueError("SpeechLimits needs 0 < min_clip_seconds <= max_clip_seconds")
        if self.max_text_chars < 1 or self.max_audio_seconds <= 0 or self.max_clip_bytes < 1:
            raise ValueError("SpeechLimits: max_text_chars, max_audio_seconds, max_clip_bytes must be > 0")


@dataclass(frozen=True)
class SpeechSettings:
    """One request's resolved settings (what the DONE event reports, and what the stage runs)."""

    voice_name: str  # the preset used; "" for a speaker clip or no voice at all
    voice: RegisteredVoice | None
    sampling: FlowSampling
    seed: int  # segment i draws from seed + i
    speed: float
    sample_rate: int  # of the audio out
    format: str
    instruction: str | None
    max_patches: int  # talker steps for the whole request (the audio-out limit)

    def segment_seed(self, index: int) -> int:
        return (self.seed + index) % (MAX_SEED + 1)


@dataclass(frozen=True)
class SpeechPlan:
    text: str
    segments: tuple[str, ...]
    settings: SpeechSettings


def plan(
    job: GenerateJob, model: SpeechModel, limits: SpeechLimits, fetch: FetchMedia | None = None
) -> SpeechPlan:
    """The job resolved and checked; RequestError naming the field for anything a client got wrong."""
    options = job.speech
    if job.task != "speech" or options is None:
        raise RequestError("not a speech job")
    text, clip = _message(job)
    if not text.strip():
        raise RequestError("text is empty: say what to speak")
    if len(text) > limits.max_text_chars:
        raise RequestError(f"text is {len(text)} characters, more than the limit of {limits.max_text_chars}")
    parts = tuple(segments(text))
    if not parts:
        raise RequestError("text has nothing to speak (no letters, digits or CJK characters)")
    voice = _clip_voice(clip, options, model, limits, fetch) if clip is not None else None
    return SpeechPlan(text, parts, settings(options, model, limits, voice))


def settings(
    options: SpeechOptions,
    model: SpeechModel,
    limits: SpeechLimits,
    clip_voice: RegisteredVoice | None = None,
) -> SpeechSettings:
    """The client's options over the model's defaults, checked (a clip's voice replaces a preset)."""
    if not isinstance(options.voice, str):
        raise RequestError(f"voice must be a string, got {options.voice!r}")
    if not isinstance(options.speaker_text, str):
        raise RequestError("speaker_text must be a string")
    if options.speaker_text and clip_voice is None:
        raise RequestError("speaker_text is the transcript of a speaker clip, and there is no clip")
    name, voice = _voice(options.voice, model, clip_voice)
    fmt = options.format.lower() if isinstance(options.format, str) else options.format
    if fmt not in AUDIO_FORMATS:
        raise RequestError(f"format must be one of {', '.join(AUDIO_FORMATS)}, got {options.format!r}")
    speed = _number(options.speed, "speed", MIN_SPEED, MAX_SPEED, 1.0)
    cfg = _number(options.guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE, DEFAULT_GUIDANCE)
    temperature = _number(options.temperature, "temperature", 0.0, MAX_TEMPERATURE, DEFAULT_TEMPERATURE)
    seed = secrets.randbelow(2**31) if options.seed is None else _seed(options.seed)
    if not isinstance(options.instruction, str):
        raise RequestError("instruction must be a string")
    audio_s = limits.max_audio_seconds * speed  # the talker's audio, before the tempo change
    return SpeechSettings(
        voice_name=name,
        voice=voice,
        sampling=FlowSampling(cfg=cfg, sigma=SIGMA, temperature=temperature),
        seed=seed,
        speed=speed,
        sample_rate=_sample_rate(options.sample_rate, fmt, model.sample_rate),
        format=fmt,
        instruction=options.instruction or None,
        max_patches=max(1, math.floor(audio_s / model.seconds_per_patch)),
    )


# ---- the message -----------------------------------------------------------------------------------
def _message(job: GenerateJob) -> tuple[str, MediaRef | None]:
    """(the text to speak, the speaker clip's reference or None) of the job's one user message."""
    if job.messages is None:
        if not isinstance(job.prompt, str):
            raise RequestError("a speech request needs its text (prompt or one user message)")
        return job.prompt, None
    if job.prompt is not None or len(job.messages) != 1 or job.messages[0].role != "user":
        raise RequestError("a speech request is one user message: the text and at most one speaker clip")
    texts, clips = [], []
    for part in job.messages[0].parts:
        if part.type == "text" and isinstance(part.text, str):
            texts.append(part.text)
        elif part.type == "audio" and isinstance(part.media, MediaRef):
            clips.append(part.media)
        else:
            raise RequestError(f"a speech request takes text and one speaker clip, not {part.type!r}")
    if len(clips) > 1:
        raise RequestError(f"{CLIP}: one speaker clip at most, got {len(clips)}")
    return "\n".join(texts), (clips[0] if clips else None)


def _clip_voice(
    clip: MediaRef, options: SpeechOptions, model: SpeechModel, limits: SpeechLimits, fetch: FetchMedia | None
) -> RegisteredVoice:
    if options.voice:
        raise RequestError(f"give either voice or a {CLIP}, not both (voice {options.voice!r})")
    if clip.size > limits.max_clip_bytes:
        raise RequestError(f"{CLIP} is {clip.size} bytes, more than the limit of {limits.max_clip_bytes}")
    data = fetch(clip) if fetch is not None else None
    if data is None:
        raise RequestError(f"{CLIP}: the bytes are no longer stored (they expire); send it again")
    if len(data) > limits.max_clip_bytes:
        raise RequestError(f"{CLIP} is {len(data)} bytes, more than the limit of {limits.max_clip_bytes}")
    cfg = AudioConfig(
        sample_rate=model.sample_rate,
        min_seconds=limits.min_clip_seconds,
        max_seconds=limits.max_clip_seconds,
    )
    try:
        wav = decode_audio(data, 0, cfg)  # (N,) first channel at the VAE's rate
    except RequestError as exc:  # "audio 1: why" -> the request's field
        raise RequestError(f"{CLIP}: {str(exc).removeprefix('audio 1: ')}") from None
    text = options.speaker_text if isinstance(options.speaker_text, str) else ""
    return model.voice_from_clip(wav[None].to(torch.float32), model.sample_rate, text.strip() or None)


# ---- options ---------------------------------------------------------------------------------------
def _voice(
    name: str, model: SpeechModel, clip_voice: RegisteredVoice | None
) -> tuple[str, RegisteredVoice | None]:
    if clip_voice is not None:
        return "", clip_voice
    if not name:
        default = model.default_voice
        return (default, model.voices[default]) if default else ("", None)
    if name not in model.voices:
        known = ", ".join(model.voice_names) or "none: the model has no voice presets"
        raise RequestError(f"voice {name!r} is unknown (known voices: {known})")
    return name, model.voices[name]


def _sample_rate(value: object, fmt: str, model_rate: int) -> int:
    if value is None or value == 0:
        if fmt == "opus" and model_rate not in OPUS_RATES:
            return OPUS_FALLBACK_RATE
        return model_rate
    allowed = OPUS_RATES if fmt == "opus" else SAMPLE_RATES
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        where = " for opus" if fmt == "opus" else ""
        raise RequestError(f"sample_rate must be one of {', '.join(map(str, allowed))}{where}, got {value!r}")
    return value


def _number(value: object, name: str, low: float, high: float, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{name} must be in [{low:g}, {high:g}], got {value:g}")
    return float(value)


def _seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise RequestError(f"seed must be an integer in [0, {MAX_SEED}], got {value!r}")
    return value
