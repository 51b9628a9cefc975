"""Engine outputs -> what the client sees: per-choice text / reasoning deltas, and how each choice ended.

Flow: the worker's emitter hands every `RequestOutput` snapshot of a request to its `Presenter`,
which splits each choice's new text into reasoning and answer (`ReasoningParser`, for families with
a reasoning block), counts reasoning tokens exactly (`ReasoningTracker`) and, once the request is
finished, sums the usage over its choices (the prompt counted once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.outputs import RequestOutput
from models.family import ThinkTags
from pipelines.protocol import ChoiceSummary, Usage
from pipelines.reasoning import ReasoningParser, ReasoningTracker, Split


@dataclass(frozen=True)
class ChoiceDelta:
    index: int
    reasoning: str
    text: str


@dataclass(frozen=True)
class ReasoningMode:
    """How a request's output is read: the family's tags and whether the prompt opened the block."""

    tags: ThinkTags
    starts_in_reasoning: bool


class _Choice:
    def __init__(self, mode: ReasoningMode | None, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.parser = self.tracker = None
        if mode is not None:
            self.parser = ReasoningParser(mode.tags, mode.starts_in_reasoning)
            self.tracker = ReasoningTracker(tokenizer, prompt_ids, mode.tags, mode.starts_in_reasoning)
        self.finished = False

    def split(self, out: RequestOutput) -> Split:
        if self.parser is None:
            return Split(text=out.new_text)
        self.tracker.update(out.token_ids)
        split = self.parser.feed(out.new_text) if out.new_text else Split()
        if out.finished and not self.finished:
            split = split + self.parser.finish()
        self.finished = out.finished
        return split

    @property
    def reasoning_tokens(self) -> int:
        return 0 if self.tracker is None else self.tracker.reasoning_tokens


class Presenter:
    """One request's view of its outputs; used by one thread (the emitter)."""

    def __init__(self, n: int, mode: ReasoningMode | None, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.mode = mode
        self._choices = [_Choice(mode, tokenizer, prompt_ids) for _ in range(n)]

    def deltas(self, out: RequestOutput) -> list[ChoiceDelta]:
        """The non-empty deltas of this snapshot, by choice index."""
        result = []
        for choice_out in out.choices or [out]:
            split = self._choices[choice_out.index].split(choice_out)
            if split.reasoning or split.text:
                result.append(ChoiceDelta(choice_out.index, split.reasoning, split.text))
        return result

    def usage(self, out: RequestOutput) -> Usage:
        outs = out.choices or [out]
        return Usage(
            prompt_tokens=len(out.prompt_token_ids),
            completion_tokens=sum(len(o.token_ids) for o in outs),
            reasoning_tokens=sum(c.reasoning_tokens for c in self._choices),
            cached_prompt_tokens=out.metrics.cached_prompt_tokens,
            forwards=sum(o.num_forwards for o in outs),
        )

    def summaries(self, out: RequestOutput) -> tuple[ChoiceSummary, ...] | None:
        """How each choice ended, for a request with n > 1 (None for n = 1)."""
        if not out.choices:
            return None
        return tuple(
            ChoiceSummary(
                index=o.index,
                finish_reason=o.finish_reason or "",
                completion_tokens=len(o.token_ids),
                reasoning_tokens=self._choices[o.index].reasoning_tokens,
            )
            for o in out.choices
        )
