"""Incremental detokenisation and stop-string matching for one output stream.

Decoding token by token breaks multi-byte characters and tokenizer-specific spacing, so each step
decodes a short window: the text of ids[prefix:] minus the text of ids[prefix:read]. The window starts
a few prompt tokens back for context, and the delta is held back while it ends in an incomplete UTF-8
sequence (U+FFFD). Stop strings are searched across token boundaries in the accumulated text.
"""

from __future__ import annotations

from typing import Any

_CONTEXT = 4


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids = list(prompt_ids[-_CONTEXT:])
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix : self.read], skip_special_tokens=self.skip)
        full = decode(self.ids[self.prefix :], skip_special_tokens=self.skip)
        if len(full) <= len(prefix_text) or full.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return full[len(prefix_text) :]


def find_stop(text: str, new_len: int, stops: list[str]) -> tuple[int, str] | None:
    """Earliest stop string that ends inside the last `new_len` chars: (index where it starts, string)."""
    best: tuple[int, str] | None = None
    for s in stops:
        start = max(0, len(text) - new_len - len(s) + 1)
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best
