"""SpeechModel: what speech output needs from a checkpoint's `talker/` folder, loaded once per worker.

Parts: the talker (`talker/`), its tokenizer (`talker/llm/`), the AudioVAE (`talker/vae/`), the CAM++
speaker encoder (`talker/campplus.onnx`) and the voice presets (`talker/data/voice_name.json`, wav
paths relative to `talker/`). Every preset is registered once at load (upstream registers on first
use): wav -> first channel -> VAE rate + 16 kHz copies -> CAM++ x-vector -> left-pad to a whole talker
patch -> VAE `encode_latent` -> `register_voice`. A client's speaker clip takes the same path
(`voice_from_clip`). The VAE's posterior draw uses a generator seeded `REGISTER_SEED`, so a clip
always gives the same voice. Without `campplus.onnx` voices have no speaker slot (logged at load).
Default voice: upstream's `DEFAULT_VOICE` when it is a preset, else the first preset, else none.
Legend: N = samples, T = latent frames, C = latent width, H = backbone hidden, X = x-vector width.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile
import torch

from engine.errors import CheckpointError
from models.ming.speech.speaker_encoder import CAMPPLUS_FILE, SpeakerEncoder
from models.ming.speech.talker import BailingTalker2
from models.ming.speech.talker_config import XVECTOR_DIM
from models.ming.speech.talker_loading import load_talker, load_talker_tokenizer
from models.ming.speech.talker_prompt import TalkerInputs, talker_inputs
from models.ming.speech.vae import AudioVAE
from models.ming.speech.voices import (
    CAMPPLUS_RATE,
    DEFAULT_VOICE,
    RegisteredVoice,
    VoicePreset,
    left_pad_to_multiple,
    parse_voice_presets,
    prompt_wav_multiple,
    register_voice,
    resample,
)

log = logging.getLogger(__name__)

TALKER_DIR = "talker"
PRESETS_FILE = Path("data") / "voice_name.json"
REGISTER_SEED = 0  # the VAE posterior draw of a voice prompt


def has_talker(model_dir: str | Path) -> bool:
    """A checkpoint speaks iff it has a `talker/` folder."""
    return (Path(model_dir) / TALKER_DIR).is_dir()


@dataclass(frozen=True)
class SpeechParts:
    talker: BailingTalker2
    tokenizer: Any
    vae: AudioVAE
    speaker_encoder: SpeakerEncoder | None


class SpeechModel:
    def __init__(self, parts: SpeechParts, presets: dict[str, VoicePreset], folder: Path) -> None:
        self.talker, self.tokenizer = parts.talker, parts.tokenizer
        self.vae, self.speaker_encoder = parts.vae, parts.speaker_encoder
        self.folder = folder
        self.voices: dict[str, RegisteredVoice] = {
            name: self._register_preset(preset) for name, preset in presets.items()
        }
        if DEFAULT_VOICE in self.voices:
            self.default_voice: str | None = DEFAULT_VOICE
        else:
            self.default_voice = next(iter(self.voices), None)

    @classmethod
    def load(
        cls, model_dir: str | Path, device: torch.device | str, dtype: torch.dtype
    ) -> SpeechModel | None:
        """The checkpoint's speech parts, or None when it has no `talker/` folder."""
        if not has_talker(model_dir):
            return None
        folder, device = Path(model_dir) / TALKER_DIR, torch.device(device)
        campplus = folder / CAMPPLUS_FILE
        if campplus.is_file():
            encoder = SpeakerEncoder.load(campplus)
        else:
            encoder = None
            log.warning("%s is missing: voices get no speaker embedding", campplus)
        parts = SpeechParts(
            talker=load_talker(folder, device, dtype),
            tokenizer=load_talker_tokenizer(folder),
            vae=AudioVAE.load(folder / "vae", device, dtype),
            speaker_encoder=encoder,
        )
        return cls(parts, read_presets(folder), folder)

    # ---- facts ------------------------------------------------------------------------------------
    @property
    def voice_names(self) -> tuple[str, ...]:
        """The presets, the default first."""
        rest = [name for name in self.voices if name != self.default_voice]
        return tuple([self.default_voice, *rest] if self.default_voice else rest)

    @property
    def sample_rate(self) -> int:
        return self.vae.sample_rate

    @property
    def samples_per_patch(self) -> int:
        """Waveform samples of one talker step (one patch of latent frames)."""
        return self.vae.samples_per_latent * self.talker.config.patch_size

    @property
    def seconds_per_patch(self) -> float:
        return self.samples_per_patch / self.sample_rate

    # ---- voices -----------------------------------------------------------------------------------
    def _register_preset(self, preset: VoicePreset) -> RegisteredVoice:
        path = self.folder / preset.prompt_wav
        try:
            wav, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"voice preset {preset.name!r}: cannot read {path} ({exc})") from None
        return self.voice_from_clip(torch.from_numpy(wav.T.copy()), rate, preset.prompt_text)

    @torch.inference_mode()
    def voice_from_clip(self, wav: torch.Tensor, rate: int, text: str | None) -> RegisteredVoice:
        """A speaker clip [channels, N] (or [N]) at `rate` and what it says -> a RegisteredVoice
        (upstream `register_prompt_wav` of one wav; its first channel)."""
        mono = (wav if wav.dim() == 2 else wav[None])[:1].float().cpu()  # (1, N)
        if mono.shape[1] == 0:
            raise ValueError("the speaker clip holds no samples")
        if self.speaker_encoder is not None:
            xvectors = self.speaker_encoder(resample(mono, rate, CAMPPLUS_RATE))  # (1, X)
        else:
            xvectors = torch.zeros(0, XVECTOR_DIM)
        speech = resample(mono, rate, self.sample_rate)  # (1, N')
        multiple = prompt_wav_multiple(self.vae.hop, self.vae.patch_size, self.talker.config.patch_size)
        speech = left_pad_to_multiple(speech, multiple)
        generator = torch.Generator().manual_seed(REGISTER_SEED)
        latents = self.vae.encode_latent(speech, generator)[0]  # (T, C)
        weight = self.talker.spk_head.weight
        return register_voice(
            self.talker, latents.to(weight.device, weight.dtype), xvectors.to(weight.device), text
        )

    @torch.no_grad()
    def talker_inputs(
        self, text: str, voice: RegisteredVoice | None, instruction: str | None = None
    ) -> TalkerInputs:
        """One segment's prefill (upstream `omni_audio_generation_func` with the voice's prompt)."""
        if voice is None:
            return talker_inputs(self.talker, self.tokenizer, text, instruction=instruction)
        return talker_inputs(
            self.talker,
            self.tokenizer,
            text,
            speakers=voice.speakers if voice.speakers.shape[0] else None,
            prompt_text=voice.prompt_text,
            prompt_latents=voice.prompt_latents,
            prompt_patches=voice.prompt_patches,
            instruction=instruction,
        )


def read_presets(folder: Path) -> dict[str, VoicePreset]:
    """`talker/data/voice_name.json` (none: no presets); CheckpointError naming a bad entry."""
    path = folder / PRESETS_FILE
    if not path.is_file():
        return {}
    try:
        return parse_voice_presets(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
