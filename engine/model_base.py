"""The contract between the engine and a model family's module tree.

A family's `CausalLM` subclass is built from its config.json dict on the meta device, materialised,
then filled by the loader. The engine calls only what is declared here:
`forward(ids [T], positions [T], ctx) -> hidden [T, d]`, `compute_logits(hidden) -> [T, V] float32`
(over several ranks only rank 0, which samples, gets them; the others get None),
`weight_targets()` / `ignore_checkpoint_key()` for loading, and reads `runtime` (a ModelRuntimeConfig).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from engine.config import ModelRuntimeConfig
from engine.loader import WeightTarget


class CausalLM(nn.Module):
    """Base class of every causal LM the engine can run."""

    runtime: ModelRuntimeConfig
    # Families may declare stop strings the model is known to spell out instead of its control token.
    default_stop_strings: ClassVar[tuple[str, ...]] = ()
    # True for masked-diffusion LMs (LLaDA2): logits predict their own position and decoding runs the
    # block-diffusion loop (engine.diffusion) instead of next-token sampling.
    diffusion: ClassVar[bool] = False
    # True where every layer's few-row decode path traces without a graph break (engine.decode_graph).
    compiled_decode: ClassVar[bool] = False

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> CausalLM:
        raise NotImplementedError

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
        raise NotImplementedError

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ignore_checkpoint_key(self, name: str) -> bool:
        return False

    def weight_targets(self) -> dict[str, WeightTarget]:
        """Every checkpoint key this model expects. Parameters keep their qualified names, except in
        modules that define `weight_targets(prefix)` themselves (e.g. stacked experts)."""
        targets: dict[str, WeightTarget] = {}
        custom: list[str] = []
        for prefix, module in self.named_modules():
            if any(prefix.startswith(c + ".") for c in custom):
                continue
            if prefix and hasattr(module, "weight_targets"):
                custom.append(prefix)
                targets.update(module.weight_targets(prefix))
                continue
            for name, p in module.named_parameters(recurse=False):
                targets[f"{prefix}.{name}" if prefix else name] = WeightTarget(p.data, tuple(p.shape))
        return targets
