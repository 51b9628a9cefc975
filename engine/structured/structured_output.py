"""StructuredOutput: an engine's grammar vocabulary (its tokenizer as llguidance sees it) and masks.

Built on first use (a model served without structured requests never pays for it): the tokenizer's
vocabulary is read once (~tens of ms for a 157k vocabulary), sized to the model's logits (ids past
the tokenizer's own are never allowed) with the engine's end-of-sequence ids as the ids that may end a
complete grammar.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from llguidance import LLMatcher

from engine.errors import RequestError
from engine.structured.constraint import Gate, GrammarConstraint
from engine.structured.masks import MaskPrefetcher


class StructuredOutput:
    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        if tokenizer is None:
            raise RequestError("structured output needs the model's tokenizer, and this model has none")
        # imported with the first grammar, not with the engine: llguidance.hf pulls in transformers
        import llguidance.hf

        eos = sorted(eos_token_ids)
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos or None)
        self.masks = MaskPrefetcher(vocab_size)

    def constraint(self, grammar: str, gate: Gate | None = None) -> GrammarConstraint:
        """A constraint for one request (its other samples clone it); RequestError for a bad grammar."""
        return GrammarConstraint(self.tokenizer, grammar, gate)

    def check(self, grammar: str) -> None:
        """RequestError with llguidance's message when the grammar cannot be built for this vocabulary."""
        problem = LLMatcher.validate_grammar(grammar, self.tokenizer)
        if problem:
            raise RequestError(f"invalid grammar: {problem}")


class LazyStructuredOutput:
    """Makes the engine's StructuredOutput on first use (thread-safe)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        self._args = (tokenizer, vocab_size, frozenset(eos_token_ids))
        self._made: StructuredOutput | None = None
        self._lock = threading.Lock()

    def get(self) -> StructuredOutput:
        with self._lock:
            if self._made is None:
                self._made = StructuredOutput(*self._args)
            return self._made

    def close(self) -> None:
        """Stop the mask thread of the StructuredOutput made so far (idempotent)."""
        with self._lock:
            if self._made is not None:
                self._made.masks.close()

    @property
    def built(self) -> StructuredOutput | None:
        return self._made
