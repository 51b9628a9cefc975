"""Reasoning blocks: raw output text / token ids in -> (reasoning, answer) text, reasoning-token counts,
and a logits processor that closes the block when a thinking budget runs out.

`ReasoningParser` splits a streamed output into reasoning and answer text, losslessly, for any
`ThinkTags` and two template styles:

* `starts_in_reasoning=True`: the prompt already opened the block, so the output is
  `reasoning CLOSE answer`. Everything is reasoning until the first CLOSE; after it everything is
  answer. A stray OPEN at the very start of the output, optionally after whitespace, is consumed
  together with that whitespace (models sometimes repeat it). An OPEN later on is reasoning text.
* `starts_in_reasoning=False`: while the output so far is only whitespace and/or a prefix of OPEN it
  is held back. Once it is whitespace + OPEN, both are consumed and the reasoning starts; once it can
  no longer become that, the held text is released as answer and the output stays answer for good.

In either style the answer has no tags: OPEN and CLOSE there are answer text. A tag may be split
across deltas anywhere: the longest tail that is a proper prefix of the tag being looked for is held
back and released as soon as it can no longer become the tag. `finish()` flushes what is held into
the current section; an unclosed block leaves everything after its start as reasoning (`closed` is
False). The raw output is always consumed tag text + reasoning + answer, in stream order.

`ReasoningTracker` runs a parser over a token stream (through `IncrementalDetokenizer`) and counts
reasoning tokens: a token is a reasoning token when its text lies entirely inside the reasoning
(tokens that carry any part of a tag are not). `ThinkingBudget` is a per-request logits processor
`(output_ids, logits[V]) -> logits[V]` that, once `budget` tokens followed the opening, forces the
token ids of the rest of `forced_close`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.detokenizer import IncrementalDetokenizer
from models.family import ThinkTags

if TYPE_CHECKING:
    import torch

_START, _REASONING, _ANSWER = "start", "reasoning", "answer"


@dataclass(frozen=True)
class Split:
    """New reasoning text and new answer text (a delta, or a whole output)."""

    reasoning: str = ""
    text: str = ""

    def __add__(self, other: Split) -> Split:
        return Split(self.reasoning + other.reasoning, self.text + other.text)


def partial_suffix_len(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper, non-empty prefix of `tag` (else 0)."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReasoningParser:
    """Incremental splitter of one output stream; see the module docstring for the rules.

    Offsets are char offsets in the raw output: `reasoning_start` is where the reasoning text begins
    (None while no block is open), `reasoning_end` where the closing tag begins (None until closed).
    `pending` is how many raw chars are held back; `consumed` is the tag text taken out so far.
    """

    def __init__(self, tags: ThinkTags, starts_in_reasoning: bool) -> None:
        if not isinstance(tags, ThinkTags):
            raise ValueError(f"tags must be a ThinkTags, got {type(tags).__name__}")
        self.tags = tags
        self.starts_in_reasoning = bool(starts_in_reasoning)
        self.reasoning_start: int | None = 0 if self.starts_in_reasoning else None
        self.reasoning_end: int | None = None
        self._phase = _START
        self._held = ""  # unresolved tail of the raw output
        self._raw_len = 0
        self._consumed: list[str] = []
        self._finished = False

    # ---- state -----------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.reasoning_end is not None

    @property
    def in_reasoning(self) -> bool:
        """True inside an open block (from the start in `starts_in_reasoning` mode) until CLOSE."""
        return self._phase == _REASONING or (self._phase == _START and self.starts_in_reasoning)

    @property
    def pending(self) -> int:
        return len(self._held)

    @property
    def close_prefix_len(self) -> int:
        """In the reasoning: length of the held tail that may become the closing tag (else 0)."""
        return partial_suffix_len(self._held, self.tags.close) if self.in_reasoning else 0

    @property
    def answer_start(self) -> int | None:
        """Raw char offset where the answer begins: after the closing tag, or 0 once the output is known
        to hold no block; None while that is undecided or the output is still in the block."""
        if self.reasoning_end is not None:
            return self.reasoning_end + len(self.tags.close)
        return 0 if self._phase == _ANSWER else None

    @property
    def consumed(self) -> str:
        return "".join(self._consumed)

    @property
    def raw_len(self) -> int:
        return self._raw_len

    # ---- input -----------------------------------------------------------------------------------
    def feed(self, delta: str) -> Split:
        """Take the next piece of raw output; return the reasoning / answer text it completes."""
        if self._finished:
            raise ValueError("ReasoningParser.feed() called after finish()")
        if not isinstance(delta, str):
            raise ValueError(f"delta must be a str, got {type(delta).__name__}")
        self._raw_len += len(delta)
        buf, self._held = self._held + delta, ""
        if self._phase == _START:
            return self._scan_start(buf)
        if self._phase == _REASONING:
            return self._scan_reasoning(buf)
        return Split(text=buf)

    def finish(self) -> Split:
        """End of the stream: release what is held back into the current section (once)."""
        if self._finished:
            return Split()
        self._finished = True
        buf, self._held = self._held, ""
        if self._phase == _START and self.starts_in_reasoning:
            self._phase = _REASONING
            out = self._scan_reasoning(buf)
            buf, self._held = self._held, ""
            return out + Split(reasoning=buf)
        if self._phase == _REASONING:
            return Split(reasoning=buf)
        self._phase = _ANSWER
        return Split(text=buf)

    # ---- scanning (`buf` is always the unresolved tail: it ends where the raw output ends) ---------
    def _scan_start(self, buf: str) -> Split:
        rest = buf.lstrip()
        tag_end = len(buf) - len(rest) + len(self.tags.open)
        if rest.startswith(self.tags.open):
            self._consumed.append(buf[:tag_end])
            self._phase = _REASONING
            self.reasoning_start = self._raw_len - len(buf) + tag_end
            return self._scan_reasoning(buf[tag_end:])
        if self.tags.open.startswith(rest):  # only whitespace and/or a proper prefix of OPEN so far
            self._held = buf
            return Split()
        if self.starts_in_reasoning:
            self._phase = _REASONING
            return self._scan_reasoning(buf)
        self._phase = _ANSWER
        return Split(text=buf)

    def _scan_reasoning(self, buf: str) -> Split:
        close = self.tags.close
        i = buf.find(close)
        if i >= 0:
            self.reasoning_end = self._raw_len - len(buf) + i
            self._consumed.append(close)
            self._phase = _ANSWER
            return Split(reasoning=buf[:i], text=buf[i + len(close) :])
        keep = partial_suffix_len(buf, close)
        self._held = buf[len(buf) - keep :]
        return Split(reasoning=buf[: len(buf) - keep])


def parse(text: str, tags: ThinkTags, starts_in_reasoning: bool) -> Split:
    """A whole output split into reasoning and answer (same rules as the incremental parser)."""
    parser = ReasoningParser(tags, starts_in_reasoning)
    return parser.feed(text) + parser.finish()


class ReasoningTracker:
    """Follows one request's output token ids: their text through a parser, and where each lies.

    `update(ids)` takes the whole output so far (append-only) and processes the new tail. Each token
    is recorded with the raw char span of the text it added, [start, end) (a token whose text is
    still an incomplete UTF-8 character has an empty span at the current length; the characters it
    completes later land in the span of the token that completed them).
    """

    def __init__(
        self, tokenizer: Any, prompt_ids: Sequence[int], tags: ThinkTags, starts_in_reasoning: bool
    ) -> None:
        self.parser = ReasoningParser(tags, starts_in_reasoning)
        self._detok = IncrementalDetokenizer(tokenizer, list(prompt_ids), skip_special_tokens=True)
        self._starts: list[int] = []  # raw char offset where each output token's text starts
        self._ends: list[int] = []  # ... and where it ends

    def update(self, token_ids: Sequence[int]) -> Split:
        """Process the new tail of `token_ids`; returns the reasoning / answer text it added."""
        done = len(self._starts)
        if len(token_ids) < done:
            raise ValueError(
                f"token_ids must be the whole output so far: got {len(token_ids)} ids, "
                f"but {done} were already seen"
            )
        added = Split()
        for token_id in token_ids[done:]:
            self._starts.append(self.parser.raw_len)
            added = added + self.parser.feed(self._detok.push(int(token_id)))
            self._ends.append(self.parser.raw_len)
        return added

    @property
    def num_tokens(self) -> int:
        return len(self._starts)

    @property
    def reasoning_tokens(self) -> int:
        """Tokens whose text lies entirely inside the reasoning: start >= its start, end <= its end.

        The reasoning ends where the closing tag starts once closed; before that, at the raw length
        minus what the parser holds back (a possible closing tag). So the tokens that carry the tag,
        even partly, are not reasoning tokens, and a budget of B forced after B tokens reports B.
        0 while no block was opened.
        """
        p = self.parser
        if p.reasoning_start is None:
            return 0
        end = p.reasoning_end if p.reasoning_end is not None else p.raw_len - p.pending
        lo = bisect.bisect_left(self._starts, p.reasoning_start)
        hi = bisect.bisect_right(self._ends, end)
        return max(0, hi - lo)

    def answer_tokens(self, lo: int, finished: bool) -> list[int] | None:
        """Indexes >= `lo` of the output tokens that carry answer text: their span ends past the start
        of the answer, or (an empty span: no text of their own yet) starts at or after it. So a token
        holding the end of the closing tag and the start of the answer is an answer token, and the
        tokens of the tag itself are not. None while where the answer starts is unknown; once the
        output `finished` outside any block (e.g. it was only a prefix of the opening tag) all of it is
        answer.
        """
        start = self.parser.answer_start
        if start is None and finished and self.parser.reasoning_start is None:
            start = 0
        if start is None:
            return None
        return [i for i in range(lo, len(self._starts)) if self._ends[i] > start or self._starts[i] >= start]

    @property
    def tokens_since_open(self) -> int:
        """Tokens that started at or after the start of the reasoning (0 while no block was opened)."""
        start = self.parser.reasoning_start
        return 0 if start is None else len(self._starts) - bisect.bisect_left(self._starts, start)

    @property
    def in_reasoning(self) -> bool:
        return self.parser.in_reasoning

    @property
    def closed(self) -> bool:
        return self.parser.closed

    @property
    def close_prefix_len(self) -> int:
        return self.parser.close_prefix_len


class ThinkingBudget:
    """Logits processor: after `budget` reasoning tokens, force the token ids that close the block.

    Called as `processor(output_token_ids, logits)` before each sampled token (`logits`: one row [V]).
    Once an unclosed block has `budget` tokens since it opened, it encodes `forced_close[k:]` once
    (k = chars of the closing tag the model is already writing) and forces those ids one per call;
    it forces at most once per request. So the reasoning never exceeds `budget` tokens, and is
    exactly `budget` unless the model itself was starting to close at that point. A block that was
    never opened is never forced.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        tags: ThinkTags,
        starts_in_reasoning: bool,
        budget: int,
    ) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(f"thinking_budget must be an integer >= 0, got {budget!r}")
        self.tokenizer = tokenizer
        self.prompt_ids = list(prompt_ids)
        self.tags = tags
        self.starts_in_reasoning = bool(starts_in_reasoning)
        self.budget = budget
        self.tracker = ReasoningTracker(tokenizer, self.prompt_ids, tags, self.starts_in_reasoning)
        self.forced_ids: list[int] | None = None  # set when forcing starts
        self._forced_from = 0  # output length when forcing started

    def clone(self) -> ThinkingBudget:
        """A fresh processor with the same configuration (for another sample of the same request)."""
        return ThinkingBudget(
            self.tokenizer, self.prompt_ids, self.tags, self.starts_in_reasoning, self.budget
        )

    def __call__(self, output_token_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        self.tracker.update(output_token_ids)
        if self.forced_ids is None and self._budget_spent():
            rest = self.tags.forced_close[self.tracker.close_prefix_len :]
            encoded = self.tokenizer.encode(rest, add_special_tokens=False)
            self.forced_ids = list(getattr(encoded, "ids", encoded))  # tokenizers.Encoding or list
            self._forced_from = len(output_token_ids)
        forced = self.forced_token(len(output_token_ids))
        if forced is not None:
            logits.fill_(float("-inf"))
            logits[forced] = 0.0
        return logits

    def forced_token(self, output_len: int) -> int | None:
        """The id forced at output position `output_len`, or None where the model samples freely."""
        if self.forced_ids is None:
            return None
        i = output_len - self._forced_from
        return self.forced_ids[i] if 0 <= i < len(self.forced_ids) else None

    def _budget_spent(self) -> bool:
        t = self.tracker
        return t.in_reasoning and not t.closed and t.tokens_since_open >= self.budget
