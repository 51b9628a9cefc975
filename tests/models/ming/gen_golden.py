"""The Ming image-generation golden set (official Ming-flash-omni 2.0 code on a tiny checkpoint,
/work/shared/golden/ming-gen-tiny): where it lives, its tensors and expectations, and writable copies."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import SHARED

GEN_GOLDEN = SHARED / "golden" / "ming-gen-tiny"
STATIC_SCHEDULER = GEN_GOLDEN / "variants" / "static_shift" / "scheduler"
HEIGHT, WIDTH, STEPS, GUIDANCE = 64, 96, 3, 2.0  # every sampling case


def available() -> bool:
    return (GEN_GOLDEN / "expected.json").is_file()


@cache
def expected() -> dict:
    return json.loads((GEN_GOLDEN / "expected.json").read_text())


@cache
def tensors() -> dict[str, torch.Tensor]:
    return load_file(GEN_GOLDEN / "golden.safetensors")


def writable_copy(dst: Path) -> Path:
    """The golden checkpoint parts (no golden tensors) copied to `dst`, writable."""
    shutil.copytree(GEN_GOLDEN, dst, ignore=shutil.ignore_patterns("golden.safetensors", "*.py", "*.md"))
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
