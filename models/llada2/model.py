"""LLaDA2MoeModelLM: Ling's BailingMoeV2 module tree run as a masked-diffusion LM.

Same checkpoint keys and forward as `BailingMoeV2ForCausalLM` (models/ling/model.py); only the
config handling (`llada2_config`) and the attention context differ. Logits at position i predict
the token AT i (no shift): `compute_logits(hidden [T, d]) -> [T, V]` is read row for row.
Without a `ctx`, attention is fully bidirectional (the official code with no mask); the diffusion
loop passes `BlockCausalContext(block_length)` or a cache context of the engine.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from engine.layers.attention import BlockCausalContext
from models.ling.config import BailingMoeV2Config
from models.ling.model import BailingMoeV2ForCausalLM
from models.llada2.config import llada2_config, mask_token_id


class LLaDA2MoeModelLM(BailingMoeV2ForCausalLM):
    diffusion: ClassVar[bool] = True
    # Stop strings are an autoregressive notion; diffusion output ends at the first EOS.
    default_stop_strings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: BailingMoeV2Config, mask_token_id: int | None = None) -> None:
        super().__init__(cfg)
        # config.json's `mask_token_id` if it has one (a hint only: prefer the tokenizer's `<|mask|>`)
        self.mask_token_id = mask_token_id

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> LLaDA2MoeModelLM:
        cfg = llada2_config(config)
        return cls(cfg, mask_token_id(config, cfg.vocab_size))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        return self.model(ids, positions, BlockCausalContext(None) if ctx is None else ctx)
