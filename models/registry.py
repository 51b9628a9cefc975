"""`architectures[0]` of config.json -> model class, imported lazily.

The engine reaches this through the `bailing.model_registries` entry point (pyproject.toml), so it
never imports a family package itself.
"""

from __future__ import annotations

import importlib

_ARCHITECTURES: dict[str, str] = {
    "BailingMoeV2ForCausalLM": "models.ling.model:BailingMoeV2ForCausalLM",
    "LLaDA2MoeModelLM": "models.llada2.model:LLaDA2MoeModelLM",
    "BailingMM2NativeForConditionalGeneration": "models.ming.model:BailingMM2NativeForConditionalGeneration",
}


def supported_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def resolve_architecture(name: str) -> type | None:
    """The class for `name`, or None when this registry does not know it."""
    target = _ARCHITECTURES.get(name)
    if target is None:
        return None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
