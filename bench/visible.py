"""Bench-only logits processor (a worker loads it with `--logits-processor bench.visible:make`): the
random bench checkpoint has a 32k vocab but the demo tokenizer only 2k, so most sampled ids decode to
no text and a stream's first text chunk would only come with the final one. Banning the ids the
tokenizer cannot spell (and its special tokens, so no stop string or end of turn cuts a run short)
makes every token visible text: time to first text is then time to first token, as with a real model.
"""

from __future__ import annotations

from typing import Any

import torch


class VisibleText:
    def __init__(self, tokenizer: Any) -> None:
        self.size = len(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        logits[self.size :] = float("-inf")
        logits[self.special.to(logits.device)] = float("-inf")
        return logits


def make(tokenizer: Any) -> VisibleText:
    return VisibleText(tokenizer)
