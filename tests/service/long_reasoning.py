"""Test-only logits processor (loaded by a worker with `--logits-processor`): forces a long reasoning.

Until the output holds `</think>\n\n` (what a thinking budget forces) it bans the end-of-text ids
and every token whose text has a `<` or `>` (so the random demo model can neither stop nor close
the block on its own); after that it forces ANSWER_TEXT and the end of text, so the answer and the
finish_reason are known.
A thinking budget (last in the processor list) still forces the closing tag through the bans.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

ANSWER_TEXT = "The answer is 4."


@functools.cache
def _banned(tokenizer: Any) -> torch.Tensor:
    vocab = len(tokenizer)
    ids = [i for i in range(vocab) if any(c in tokenizer.decode([i]) for c in "<>")]
    ids += list(tokenizer.all_special_ids)
    return torch.tensor(sorted(set(ids)))


class LongReasoning:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.answer = [*tokenizer.encode(ANSWER_TEXT, add_special_tokens=False), tokenizer.eos_token_id]
        self.closed_at: int | None = None

    def clone(self) -> LongReasoning:
        return LongReasoning(self.tokenizer)

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self.closed_at is None and "</think>\n\n" in self.tokenizer.decode(output_ids):
            self.closed_at = len(output_ids)
        if self.closed_at is None:
            logits[_banned(self.tokenizer)] = float("-inf")
            return logits
        step = len(output_ids) - self.closed_at
        forced = self.answer[min(step, len(self.answer) - 1)]
        logits.fill_(float("-inf"))
        logits[forced] = 0.0
        return logits


def make(tokenizer: Any) -> LongReasoning:
    return LongReasoning(tokenizer)
