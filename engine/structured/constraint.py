"""GrammarConstraint: one sample's grammar state (an llguidance matcher) and when it comes into force.

A constraint is in force from the first output token unless it has a `gate`: then the output is free
until the gate says the constrained part starts (e.g. a reasoning model's answer after its think
block), and the text the output already holds past that point is fed to the matcher first.

Flow per sampled token (engine thread, under the engine lock): `advance(output_ids)` -> either the
gate opens (prefix consumed) or the new token is consumed -> `fill(bitmask, row)` writes the mask of
the next token (on the prefetch thread; the matcher is never touched by two threads at once, see
`engine.structured.masks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from llguidance import LLMatcher, LLTokenizer

from engine.errors import RequestError

FAILED = "structured output: "  # how a sample's stop_reason starts when its grammar failed it


class Gate(Protocol):
    """Says when a constraint comes into force: (output ids so far) -> None while it is not yet, else
    the output text that already lies inside the constrained part ("" when it starts right here).

    Called after every token until it opens (then never again). `clone()` gives a fresh gate for
    another sample of the same request.
    """

    def __call__(self, output_token_ids: Sequence[int]) -> str | None: ...

    def clone(self) -> Gate: ...


class GrammarConstraint:
    """The grammar a sample's output must follow; see the module docstring."""

    def __init__(self, tokenizer: LLTokenizer, grammar: str, gate: Gate | None = None) -> None:
        self.tokenizer, self.grammar, self.gate = tokenizer, grammar, gate
        self.matcher = LLMatcher(tokenizer, grammar, log_level=0)  # built with the GIL released
        if self.matcher.is_error():
            raise RequestError(f"invalid grammar: {self.matcher.get_error()}")
        self.active = gate is None
        self.error: str | None = None  # set once the output left the grammar (the sample then fails)
        self.pending: Any = None  # the prefetched mask of the next token (engine.structured.masks)

    def clone(self) -> GrammarConstraint:
        """A fresh constraint (same grammar, a fresh gate) for another sample of the same request."""
        return GrammarConstraint(
            self.tokenizer, self.grammar, None if self.gate is None else self.gate.clone()
        )

    def advance(self, output_token_ids: Sequence[int]) -> None:
        """Take the token just appended to the output (sets `error` if the grammar rejects it)."""
        if self.error is not None:
            return
        if not self.active:
            inside = self.gate(output_token_ids)
            if inside is None:
                return
            self.active = True
            if inside and not self.matcher.consume_tokens(self.tokenizer.tokenize_str(inside)):
                self.error = f"the output {inside!r} before the constrained part does not fit the grammar"
            return
        if not self.matcher.consume_token(int(output_token_ids[-1])):
            self.error = f"the grammar rejected token {output_token_ids[-1]}: {self.matcher.get_error()}"

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into bitmask[row] (int32, one bit per token id)."""
        from llguidance.torch import fill_next_token_bitmask  # see StructuredOutput: imported on first use

        fill_next_token_bitmask(self.matcher, bitmask, row)

    @property
    def finished(self) -> bool:
        """The grammar is complete: only an end-of-sequence token may follow."""
        return self.active and self.matcher.is_stopped()
