"""The Ming speech golden set (official Ming-flash-omni 2.0 talker + AudioVAE on a tiny checkpoint,
/work/shared/golden/ming-tts-tiny): where it lives, its tensors and expectations."""

from __future__ import annotations

import json
from functools import cache

import torch
from safetensors.torch import load_file

from tests.conftest import SHARED

TTS_GOLDEN = SHARED / "golden" / "ming-tts-tiny"
TALKER = TTS_GOLDEN / "talker"
VAE = TALKER / "vae"
VAE_SLIDING = TTS_GOLDEN / "variants" / "vae_sliding_window" / "talker" / "vae"
CASES = ("gen_det", "gen_sde")
SCHEDULES = ("chunks_4_4_4", "chunks_8_4", "chunks_4_8")


def available() -> bool:
    return (TTS_GOLDEN / "expected.json").is_file()


@cache
def expected() -> dict:
    return json.loads((TTS_GOLDEN / "expected.json").read_text())


@cache
def tensors() -> dict[str, torch.Tensor]:
    return load_file(TTS_GOLDEN / "golden.safetensors")


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
