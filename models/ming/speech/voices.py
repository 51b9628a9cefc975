"""Talker voices: named presets (upstream `data/voice_name.json`), how a request picks one, and a
registered voice (upstream `register_prompt_wav`): prompt latents, their aggregator embeddings and the
speaker embeddings that fill the prompt's slots.

Flow: `resolve_voice(presets, name, prompt_text, prompt_wavs)` -> a `VoiceSource` (wav paths + text) ->
the caller loads each wav; per wav: `resample` to 16 kHz -> `campplus_features` -> CAM++ (onnxruntime
on `talker/campplus.onnx`, not wired here) -> x-vector [192]; all wavs resampled to the VAE rate,
concatenated in time, `left_pad_to_multiple(prompt_wav_multiple(...))` -> AudioVAE `encode_latent`
(models/ming/speech/vae*) -> prompt latents [T, C] -> `register_voice` -> `RegisteredVoice`.
Legend: k = speakers (one per prompt wav), T = prompt latent frames, n = T / P prompt patches,
P = patch frames, C = latent width, H = backbone hidden, X = x-vector width, N = samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torchaudio

from models.ming.speech.talker import BailingTalker2
from models.ming.speech.talker_config import XVECTOR_DIM

DEFAULT_VOICE = "DB30"  # upstream omni_audio_generation(voice_name='DB30')
CAMPPLUS_RATE = 16000  # CAM++ runs on 16 kHz fbank features
CAMPPLUS_MEL_BINS = 80


@dataclass(frozen=True)
class VoicePreset:
    name: str
    prompt_text: str
    prompt_wav: str  # path relative to the presets' folder (upstream: the repository root)


def parse_voice_presets(data: Any) -> dict[str, VoicePreset]:
    """`voice_name.json` as parsed JSON: {name: {"prompt_text", "prompt_wav_path"}}."""
    if not isinstance(data, dict):
        raise ValueError("voice presets must be a JSON object of name -> preset")
    presets = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"voice preset {name!r} must be an object")
        text, wav = entry.get("prompt_text"), entry.get("prompt_wav_path")
        if not isinstance(text, str) or not isinstance(wav, str) or not wav:
            raise ValueError(f"voice preset {name!r} needs string prompt_text and prompt_wav_path")
        presets[name] = VoicePreset(name, text, wav)
    return presets


@dataclass(frozen=True)
class VoiceSource:
    """What to register: the prompt wavs (one speaker each, concatenated in time) and their text."""

    prompt_wavs: tuple[str, ...]
    prompt_text: str | None


def resolve_voice(
    presets: dict[str, VoicePreset],
    voice_name: str | None,
    prompt_text: str | None = None,
    prompt_wavs: tuple[str, ...] = (),
) -> VoiceSource | None:
    """A preset by name, or the caller's own prompt wavs; None: no voice prompt at all.

    Upstream (`omni_audio_generation`) asserts that a preset and explicit prompts are not mixed; it
    silently ignores an unknown name. Here an unknown name is an error.
    """
    if voice_name is not None:
        if prompt_text is not None or prompt_wavs:
            raise ValueError("give either voice_name or prompt_text / prompt_wavs, not both")
        if voice_name not in presets:
            raise ValueError(f"unknown voice {voice_name!r} (known: {', '.join(sorted(presets))})")
        preset = presets[voice_name]
        return VoiceSource((preset.prompt_wav,), preset.prompt_text)
    if not prompt_wavs:
        if prompt_text is not None:
            raise ValueError("prompt_text needs the prompt wav it transcribes")
        return None
    return VoiceSource(tuple(prompt_wavs), prompt_text)


def resample(wav: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """wav [channels, N] at `rate` -> at `target` (torchaudio's windowed-sinc defaults, as upstream's
    `transforms.Resample`)."""
    return wav if rate == target else torchaudio.functional.resample(wav, rate, target)


def campplus_features(wav16k: torch.Tensor) -> torch.Tensor:
    """CAM++'s input: 80-bin kaldi fbank of the first channel of wav16k [channels, N] (no dither),
    mean over time removed -> [1, frames, 80] (upstream `SpkembExtractor._extract_spk_embedding`)."""
    feats = torchaudio.compliance.kaldi.fbank(
        wav16k.float(), num_mel_bins=CAMPPLUS_MEL_BINS, dither=0, sample_frequency=CAMPPLUS_RATE
    )  # (frames, 80)
    return (feats - feats.mean(dim=0, keepdim=True))[None]


def prompt_wav_multiple(vae_hop: int, vae_patch: int, talker_patch: int) -> int:
    """Samples per talker patch: hop x max(1, VAE patch) x talker patch (upstream `patch_pt`)."""
    return vae_hop * max(1, vae_patch) * talker_patch


def left_pad_to_multiple(wav: torch.Tensor, multiple: int) -> torch.Tensor:
    """wav [channels, N] -> zeros on the left up to the next multiple of `multiple` samples."""
    extra = -wav.shape[-1] % multiple
    return torch.nn.functional.pad(wav, (extra, 0)) if extra else wav


@dataclass(frozen=True)
class RegisteredVoice:
    """A voice ready for `talker_prompt.talker_inputs` (upstream's `registered_prompt` entry)."""

    prompt_text: str | None
    prompt_latents: torch.Tensor  # [T, C] (the history's initial frames)
    prompt_patches: torch.Tensor  # [n, H] (the <audioPatch> slots)
    speakers: torch.Tensor  # [k, H] (the speaker slots)


@torch.no_grad()
def register_voice(
    talker: BailingTalker2, prompt_latents: torch.Tensor, xvectors: torch.Tensor, prompt_text: str | None
) -> RegisteredVoice:
    """prompt_latents [T, C] from the VAE encoder, xvectors [k, X] from CAM++ -> a RegisteredVoice."""
    patch, width = talker.config.patch_size, talker.config.latent_dim
    if prompt_latents.ndim != 2 or prompt_latents.shape[1] != width:
        raise ValueError(f"prompt_latents must be [T, {width}], got {tuple(prompt_latents.shape)}")
    if prompt_latents.shape[0] % patch:
        raise ValueError(f"prompt_latents has {prompt_latents.shape[0]} frames, not a multiple of {patch}")
    if xvectors.ndim != 2 or xvectors.shape[1] != XVECTOR_DIM:
        raise ValueError(f"xvectors must be [k, {XVECTOR_DIM}], got {tuple(xvectors.shape)}")
    patches = prompt_latents.reshape(-1, patch, width)  # (T, C) -> (n, P, C)
    embeds = talker.embed_patches(patches)[:, 0]  # (n, 1, H) -> (n, H)
    return RegisteredVoice(prompt_text, prompt_latents, embeds, talker.speaker_embedding(xvectors))
