"""Engine outputs -> what the client sees: per-choice text / reasoning deltas, and how each choice ended.

Flow: the worker's emitter hands every `RequestOutput` snapshot of a request to its `Presenter`,
which splits each choice's new text into reasoning and answer (`ReasoningParser`, for families with
a reasoning block), takes tool calls out of the answer (`ToolCallParser`, when the request has
tools), counts reasoning tokens exactly (`ReasoningTracker`), picks out the logprobs of the answer
tokens when the request asked for them (`LogprobReader`) and, once the request is finished, sums
the usage over its choices (the prompt counted once). A choice that ended normally with tool calls
finishes with "tool_calls".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.outputs import RequestOutput
from models.family import ThinkTags, ToolCallTags
from pipelines.logprobs import LogprobReader, TokenTexts
from pipelines.protocol import ChoiceSummary, TokenLogprob, Usage
from pipelines.reasoning import ReasoningParser, ReasoningTracker, Split
from pipelines.structured_spec import ToolCall
from pipelines.tool_calls import ToolCallParser


@dataclass(frozen=True)
class ChoiceDelta:
    index: int
    reasoning: str
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()  # of the answer tokens decided since the last delta


@dataclass(frozen=True)
class ReasoningMode:
    """How a request's output is read: the family's tags and whether the prompt opened the block."""

    tags: ThinkTags
    starts_in_reasoning: bool


class _Choice:
    def __init__(
        self,
        mode: ReasoningMode | None,
        tokenizer: Any,
        prompt_ids: list[int],
        tools: ToolCallTags | None,
        logprobs: LogprobReader | None,
    ) -> None:
        self.parser = self.tracker = None
        if mode is not None:
            self.parser = ReasoningParser(mode.tags, mode.starts_in_reasoning)
            self.tracker = ReasoningTracker(tokenizer, prompt_ids, mode.tags, mode.starts_in_reasoning)
        self.calls = None if tools is None else ToolCallParser(tools)
        self.logprobs = logprobs
        self.finished = False

    def delta(self, index: int, out: RequestOutput) -> ChoiceDelta:
        split = self._split(out)
        logprobs = () if self.logprobs is None else self.logprobs.take(out, self.tracker)
        if self.calls is None:
            return ChoiceDelta(index, split.reasoning, split.text, logprobs=logprobs)
        parsed = self.calls.feed(split.text)
        if out.finished:
            tail = self.calls.finish()
            parsed.content += tail.content
        return ChoiceDelta(index, split.reasoning, parsed.content, tuple(parsed.calls), logprobs)

    def _split(self, out: RequestOutput) -> Split:
        if self.parser is None:
            self.finished = out.finished
            return Split(text=out.new_text)
        self.tracker.update(out.token_ids)
        split = self.parser.feed(out.new_text) if out.new_text else Split()
        if out.finished and not self.finished:
            split = split + self.parser.finish()
        self.finished = out.finished
        return split

    def finish_reason(self, reason: str | None) -> str:
        called = self.calls is not None and self.calls.calls
        return "tool_calls" if reason == "stop" and called else reason or ""

    @property
    def reasoning_tokens(self) -> int:
        return 0 if self.tracker is None else self.tracker.reasoning_tokens


class Presenter:
    """One request's view of its outputs; used by one thread (the emitter)."""

    def __init__(
        self,
        n: int,
        mode: ReasoningMode | None,
        tokenizer: Any,
        prompt_ids: list[int],
        tools: ToolCallTags | None = None,
        logprobs: int | None = None,
    ) -> None:
        """`tools`: the family's call format when the answer is read for tool calls (else None);
        `logprobs`: the request's top alternatives per token (SamplingParams.logprobs; None: none)."""
        self.mode = mode
        texts = None if logprobs is None else TokenTexts(tokenizer)  # shared by the choices
        readers = [None if texts is None else LogprobReader(texts, logprobs) for _ in range(n)]
        self._choices = [_Choice(mode, tokenizer, prompt_ids, tools, r) for r in readers]

    def deltas(self, out: RequestOutput) -> list[ChoiceDelta]:
        """The non-empty deltas of this snapshot, by choice index."""
        result = []
        for choice_out in out.choices or [out]:
            delta = self._choices[choice_out.index].delta(choice_out.index, choice_out)
            if delta.reasoning or delta.text or delta.tool_calls or delta.logprobs:
                result.append(delta)
        return result

    def finish_reason(self, out: RequestOutput) -> str:
        """Choice 0's finish reason as the client sees it ("tool_calls" when it ended with calls)."""
        return self._choices[0].finish_reason(out.finish_reason)

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
                finish_reason=self._choices[o.index].finish_reason(o.finish_reason),
                completion_tokens=len(o.token_ids),
                reasoning_tokens=self._choices[o.index].reasoning_tokens,
            )
            for o in out.choices
        )
