"""Fixtures for the Ming model tests: the golden tensors and expectations, the tiny thinker loaded
through the engine's loader (sdpa and eager ViT attention)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.model_loader import load_model
from tests.models.ming.ming_golden import GOLDEN, TINY, build_thinker


@pytest.fixture(scope="session")
def ming_expected() -> dict:
    if not (GOLDEN / "expected.json").is_file():
        pytest.skip("shared Ming golden data not found")
    return json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture(scope="session")
def ming_tensors(ming_expected) -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "inputs.safetensors")


@pytest.fixture(scope="session")
def thinker(ming_expected):
    """The tiny thinker as the engine loads it (registry -> build -> materialise -> strict load)."""
    return load_model(TINY, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def eager_thinker(ming_expected):
    return build_thinker(vision_attn="eager")
