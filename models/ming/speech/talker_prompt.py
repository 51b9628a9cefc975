"""The talker's prompt (upstream `BailingTalker2.omni_audio_generation_func` and the history set-up of
`generate`): text pieces -> token ids with slot positions -> input embeddings with the speaker and
prompt-patch slots overwritten, plus the initial latent history.

Layout (each piece encoded on its own, as upstream does, then concatenated):
  <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n | <|im_start|>user\\n | {prompt}
  | per speaker i: "  speaker_{i+1}:" <|vision_start|> <|vision_pad|> "<|vision_end|>\\n"
  | " Text input:\\n" (dropped for BGM descriptions) | {prompt_text} | {text} | <|im_end|>\\n
  | <|im_start|>assistant\\n | {instruction}<|im_end|> (if any) | <audio> | <audioPatch> x n
The i-th speaker's embedding replaces the <|vision_pad|> slot; the prompt-wav patch embeddings
replace the <audioPatch> slots. Legend: L = tokens, H = backbone hidden, k = speakers, n = prompt
patches, T = prompt latent frames, Hp = history frames, C = latent width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import TokenizerError
from models.ming.speech.talker import BailingTalker2

SPEECH_PROMPT = "Please generate speech based on the following description.\n"  # TTS and most tasks
AUDIO_EVENT_PROMPT = "Please generate audio events based on given text.\n"  # TTA (test_talker.py)
MUSIC_PROMPT = "Please generate music based on the following description.\n"  # BGM (test_talker.py)
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
TEXT_INPUT = " Text input:\n"
BGM_FIELDS = ("Genre: ", "Mood: ", "Instrument: ", "Theme: ", "Duration: ")
SPEAKER_START, SPEAKER_PAD, AUDIO, AUDIO_PATCH = (
    "<|vision_start|>",
    "<|vision_pad|>",
    "<audio>",
    "<audioPatch>",
)


def is_bgm_description(text: str) -> bool:
    """Upstream drops " Text input:\\n" when the text names every BGM field."""
    return all(field in text for field in BGM_FIELDS)


@dataclass(frozen=True)
class TalkerPrompt:
    """Token ids of one prompt and the positions its embeddings overwrite."""

    input_ids: tuple[int, ...]
    speaker_slots: tuple[int, ...]  # one per speaker: the <|vision_pad|> position
    patch_slots: tuple[int, ...]  # the <audioPatch> positions, in order


def _single(tokenizer: Any, token: str) -> list[int]:
    ids = tokenizer.encode(token)
    if len(ids) != 1:
        raise TokenizerError(f"the talker tokenizer must encode {token!r} as one token, got {ids}")
    return ids


def build_prompt(
    tokenizer: Any,
    text: str,
    *,
    prompt: str = SPEECH_PROMPT,
    num_speakers: int = 0,
    prompt_text: str | None = None,
    num_prompt_patches: int = 0,
    instruction: str | None = None,
) -> TalkerPrompt:
    """The token layout above. The prompt text and the <audioPatch> slots come together: only when
    `prompt_text` is given AND there are prompt patches (upstream's zero-shot condition)."""
    enc = tokenizer.encode
    ids: list[int] = enc(SYSTEM) + enc("<|im_start|>user\n") + enc(prompt)
    speaker_slots = []
    for i in range(num_speakers):
        ids += enc(f"  speaker_{i + 1}:") + _single(tokenizer, SPEAKER_START)
        speaker_slots.append(len(ids))
        ids += _single(tokenizer, SPEAKER_PAD) + enc("<|vision_end|>\n")
    zero_shot = prompt_text is not None and num_prompt_patches > 0
    if not is_bgm_description(text):
        ids += enc(TEXT_INPUT)
    if zero_shot:
        ids += enc(prompt_text)
    ids += enc(text) + enc("<|im_end|>\n") + enc("<|im_start|>assistant\n")
    if instruction is not None:
        ids += enc(instruction) + enc("<|im_end|>")
    ids += _single(tokenizer, AUDIO)
    patch_start = len(ids)
    if zero_shot:
        ids += _single(tokenizer, AUDIO_PATCH) * num_prompt_patches
    patch_slots = tuple(range(patch_start, len(ids)))
    return TalkerPrompt(tuple(ids), tuple(speaker_slots), patch_slots)


def embed_prompt(
    talker: BailingTalker2,
    prompt: TalkerPrompt,
    speakers: torch.Tensor | None = None,
    prompt_patches: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prompt ids -> input embeddings [L, H]; speakers [k, H] and prompt_patches [n, H] overwrite
    their slots (k and n must match the prompt's)."""
    weight = talker.model.embed_tokens.weight
    ids = torch.tensor(prompt.input_ids, dtype=torch.long, device=weight.device)
    embeds = talker.embed_tokens(ids).clone()  # (L, H)
    for name, rows, slots in (
        ("speakers", speakers, prompt.speaker_slots),
        ("prompt_patches", prompt_patches, prompt.patch_slots),
    ):
        count = 0 if rows is None else rows.shape[0]
        if count != len(slots):
            raise ValueError(f"{name}: {count} rows for {len(slots)} slots in the prompt")
        if rows is not None and count:
            embeds[list(slots)] = rows.to(embeds.dtype)
    return embeds


def initial_history(
    prompt_latents: torch.Tensor | None,
    frames: int,
    latent_dim: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """History [Hp, C]: zeros, with the prompt latents [T, C] right-aligned (their last Hp frames when
    T > Hp)."""
    history = torch.zeros(frames, latent_dim, device=device, dtype=dtype)
    if prompt_latents is not None and prompt_latents.shape[0]:
        tail = prompt_latents[-frames:]  # (min(T, Hp), C)
        history[frames - tail.shape[0] :] = tail.to(device=device, dtype=dtype)
    return history


@dataclass(frozen=True)
class TalkerInputs:
    """One request's prefill: the prompt, its embeddings [L, H] and the initial history [Hp, C]."""

    prompt: TalkerPrompt
    inputs_embeds: torch.Tensor
    history: torch.Tensor


def talker_inputs(
    talker: BailingTalker2,
    tokenizer: Any,
    text: str,
    *,
    prompt: str = SPEECH_PROMPT,
    speakers: torch.Tensor | None = None,
    prompt_text: str | None = None,
    prompt_latents: torch.Tensor | None = None,
    prompt_patches: torch.Tensor | None = None,
    instruction: str | None = None,
) -> TalkerInputs:
    """Everything `omni_audio_generation_func` + `generate` build before the first AR step.

    speakers [k, H] (spk_head outputs; zeros(1, H) for upstream's `use_zero_spk_emb`), prompt_latents
    [T, C] and prompt_patches [n, H] (the registered prompt wav). Upstream quirk kept: the history
    starts from the prompt latents whenever they are given, even when the prompt text (and so the
    <audioPatch> slots) is absent.
    """
    patches = 0 if prompt_patches is None else prompt_patches.shape[0]
    built = build_prompt(
        tokenizer,
        text,
        prompt=prompt,
        num_speakers=0 if speakers is None else speakers.shape[0],
        prompt_text=prompt_text,
        num_prompt_patches=patches,
        instruction=instruction,
    )
    used_patches = prompt_patches if built.patch_slots else None
    embeds = embed_prompt(talker, built, speakers, used_patches)
    cfg = talker.config
    history = initial_history(
        prompt_latents, cfg.history_patch_size, cfg.latent_dim, embeds.device, embeds.dtype
    )
    return TalkerInputs(built, embeds, history)
