"""The compute dtype the engine picks when none is asked for: bf16 on a GPU; on a CPU bf16 only where
the CPU has bf16 arithmetic ($BAILING_CPU_DTYPE and an explicit dtype override it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from engine import model_loader
from engine.model_loader import cpu_has_bf16_arithmetic, resolve_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_cpu_default_follows_bf16_arithmetic(monkeypatch, bf16, expected):
    monkeypatch.delenv("BAILING_CPU_DTYPE", raising=False)
    monkeypatch.setattr(model_loader, "cpu_has_bf16_arithmetic", lambda: bf16)
    assert resolve_dtype(None, CPU) is expected
    assert resolve_dtype("auto", CPU) is expected
    assert resolve_dtype("float32", CPU) is torch.float32  # asked for: always honoured
    assert resolve_dtype(None, torch.device("cuda")) is torch.bfloat16
    assert resolve_dtype(None, CPU, quantization="int8") is torch.float32  # int8 weights: fp32 compute


def test_the_environment_presets_the_cpu_default(monkeypatch):
    monkeypatch.setattr(model_loader, "cpu_has_bf16_arithmetic", lambda: True)
    monkeypatch.setenv("BAILING_CPU_DTYPE", "float32")
    assert resolve_dtype(None, CPU) is torch.float32
    monkeypatch.setenv("BAILING_CPU_DTYPE", "auto")
    assert resolve_dtype(None, CPU) is torch.bfloat16
    monkeypatch.setenv("BAILING_CPU_DTYPE", "int3")
    with pytest.raises(ValueError, match=r"BAILING_CPU_DTYPE.*int3"):
        resolve_dtype(None, CPU)
    with pytest.raises(ValueError, match="unknown dtype 'fp7'"):
        resolve_dtype("fp7", CPU)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_the_capability_matches_the_cpu_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert cpu_has_bf16_arithmetic() == bool(flags & {"avx512_bf16", "amx_bf16"})
