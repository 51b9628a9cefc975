"""The shared LLaDA2 golden set (`shared/golden/llada2-tiny`): paths and loaders for the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from engine.diffusion import DiffusionParams
from engine.model_base import CausalLM
from engine.model_loader import load_model
from tests.conftest import SHARED

GOLDEN_LLADA2 = SHARED / "golden" / "llada2-tiny"
CHECKPOINT = GOLDEN_LLADA2 / "tiny-llada2"


def require_golden() -> Path:
    if not CHECKPOINT.is_dir():
        pytest.skip(f"shared LLaDA2 golden data not found at {GOLDEN_LLADA2}")
    return GOLDEN_LLADA2


def expected() -> dict[str, Any]:
    return json.loads((require_golden() / "expected.json").read_text())


def reference_tensors() -> dict[str, torch.Tensor]:
    return load_file(require_golden() / "logits.safetensors")


def load_tiny(folder: Path = CHECKPOINT, lm_head_scale: float = 1.0) -> CausalLM:
    """Load through config.json -> registry -> strict loader, in float32 on the CPU."""
    require_golden()
    model = load_model(folder, torch.device("cpu"), torch.float32)
    if lm_head_scale != 1.0:  # the golden "confident" runs: lm_head.weight * scale, in float32
        with torch.no_grad():
            model.lm_head.weight.mul_(lm_head_scale)
    return model


def run_params(run: dict[str, Any], prefix_cache: bool = True) -> DiffusionParams:
    """The DiffusionParams of a golden generate() run (its recorded args, decoder llada2)."""
    args = run["args"]
    return DiffusionParams(
        block_length=args["block_length"],
        steps=args.get("steps", 32),
        threshold=args["threshold"],
        decoder="llada2",
        eos_early_stop=args.get("eos_early_stop", False),
        mask_token_id=args["mask_id"],
        eos_token_id=args["eos_id"],
        prefix_cache=prefix_cache,
    )
