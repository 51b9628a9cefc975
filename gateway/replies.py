"""Events -> replies: a request's stream events as GenerateChunks (streaming) or one GenerateResponse.

Deltas keep their choice index; tool calls travel whole (id, name, arguments); answer-token logprobs
go with the text delta of their event; a terminal ERROR (or a deadline cancel) becomes the call's
status through `event_error`.
"""

from __future__ import annotations

from gateway.api import pb
from gateway.errors import Rejection, status_from_name
from gateway.state import RequestTrace
from pipelines.protocol import Event, EventType, TokenLogprob, ToolCall, Usage

MAX_ERROR_CHARS = 500


def event_error(event: Event) -> Rejection | None:
    """The status a terminal event ends the call with, or None when it ends with an answer."""
    if event.type is EventType.ERROR:
        message = (event.message or "the worker failed").strip().splitlines()[0][:MAX_ERROR_CHARS]
        return Rejection(status_from_name(event.error_code), message)
    if event.type is EventType.CANCELLED and event.error_code not in ("", "CANCELLED"):
        # e.g. DEADLINE_EXCEEDED: the call failed; a plain cancel still ends with finish_reason "cancelled"
        return Rejection(status_from_name(event.error_code), event.message or event.error_code.lower())
    return None


def _finish_reason(event: Event) -> str:
    if event.type is EventType.CANCELLED:
        return event.finish_reason or "cancelled"
    return event.finish_reason or "stop"


def _usage(event: Event) -> pb.Usage:
    u = event.usage
    if u is None:
        return pb.Usage()
    return pb.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        reasoning_tokens=u.reasoning_tokens,
        cached_prompt_tokens=u.cached_prompt_tokens,
        forwards=u.forwards,
        tokens_per_forward=u.tokens_per_forward,
    )


def event_to_chunks(request_id: str, event: Event) -> list[pb.GenerateChunk]:
    """The chunks one event becomes: reasoning delta, then text delta (with the event's logprobs, even
    when it has no text), then tool calls, then (terminal) the finish.

    Deltas carry the event's choice `index`. A DONE of n = 1 ends with one chunk (finish_reason +
    usage); a DONE with `choices` (n > 1) ends with one chunk per choice (index + finish_reason),
    the last of them also carrying usage; a CANCELLED ends with one chunk. Raises the event's
    Rejection for ERROR (and a deadline-cancel) terminals.
    """
    chunks = []
    if event.reasoning_text:
        chunks.append(
            pb.GenerateChunk(request_id=request_id, index=event.index, reasoning_text=event.reasoning_text)
        )
    if event.text or event.logprobs:
        logprobs = logprobs_pb(event.logprobs)
        chunks.append(
            pb.GenerateChunk(request_id=request_id, index=event.index, text=event.text, logprobs=logprobs)
        )
    if event.tool_calls:
        calls = [tool_call_pb(c) for c in event.tool_calls]
        chunks.append(pb.GenerateChunk(request_id=request_id, index=event.index, tool_calls=calls))
    if event.terminal:
        error = event_error(event)
        if error is not None:
            raise error
        chunks += _finish_chunks(request_id, event)
    return chunks


def _finish_chunks(request_id: str, event: Event) -> list[pb.GenerateChunk]:
    if event.type is not EventType.DONE or not event.choices:
        return [
            pb.GenerateChunk(request_id=request_id, finish_reason=_finish_reason(event), usage=_usage(event))
        ]
    chunks = [
        pb.GenerateChunk(request_id=request_id, index=c.index, finish_reason=c.finish_reason or "stop")
        for c in event.choices
    ]
    chunks[-1].usage.CopyFrom(_usage(event))
    return chunks


class ResponseBuilder:
    """Collects a request's events into one GenerateResponse (the unary Generate).

    Deltas are gathered per choice index; `build` makes one Choice per index (the DONE's `choices`
    summaries for n > 1, the single stream for n = 1) and mirrors choice 0 in the single-answer fields.
    """

    def __init__(self, request_id: str, model: str) -> None:
        self.request_id = request_id
        self.model = model
        self._text: dict[int, list[str]] = {}
        self._reasoning: dict[int, list[str]] = {}
        self._calls: dict[int, list[pb.ToolCall]] = {}
        self._logprobs: dict[int, list[pb.TokenLogprob]] = {}
        self._last: Event | None = None

    def add(self, event: Event) -> None:
        """Append the event's deltas; raises the event's Rejection for an ERROR terminal."""
        if event.reasoning_text:
            self._reasoning.setdefault(event.index, []).append(event.reasoning_text)
        if event.text:
            self._text.setdefault(event.index, []).append(event.text)
        if event.tool_calls:
            self._calls.setdefault(event.index, []).extend(tool_call_pb(c) for c in event.tool_calls)
        if event.logprobs:
            self._logprobs.setdefault(event.index, []).extend(logprobs_pb(event.logprobs))
        if event.terminal:
            error = event_error(event)
            if error is not None:
                raise error
            self._last = event

    def _choice(
        self, index: int, finish_reason: str, completion_tokens: int, reasoning_tokens: int
    ) -> pb.Choice:
        return pb.Choice(
            index=index,
            text="".join(self._text.get(index, ())),
            reasoning_text="".join(self._reasoning.get(index, ())),
            finish_reason=finish_reason,
            completion_tokens=completion_tokens,
            reasoning_tokens=reasoning_tokens,
            tool_calls=self._calls.get(index, ()),
            logprobs=self._logprobs.get(index, ()),
        )

    def _choices(self) -> list[pb.Choice]:
        last = self._last
        if last is not None and last.choices:
            return [
                self._choice(c.index, c.finish_reason or "stop", c.completion_tokens, c.reasoning_tokens)
                for c in last.choices  # in index order, every index present
            ]
        finish = _finish_reason(last) if last else ""
        top = max([0, *self._text, *self._reasoning])  # > 0 only for a cancelled n > 1 request
        if top > 0:
            return [self._choice(i, finish, 0, 0) for i in range(top + 1)]
        u = (last.usage if last is not None else None) or Usage()
        return [self._choice(0, finish, u.completion_tokens, u.reasoning_tokens)]

    def build(self, trace: RequestTrace) -> pb.GenerateResponse:
        last = self._last
        choices = self._choices()
        first = choices[0]
        return pb.GenerateResponse(
            request_id=self.request_id,
            model=self.model,
            text=first.text,
            reasoning_text=first.reasoning_text,
            finish_reason=first.finish_reason,
            usage=_usage(last) if last else pb.Usage(),
            timing=pb.Timing(
                queue_s=trace.queue_s, time_to_first_token_s=trace.ttft_s, total_s=trace.total_s
            ),
            choices=choices,
            tool_calls=first.tool_calls,
            logprobs=first.logprobs,
        )


def tool_call_pb(call: ToolCall) -> pb.ToolCall:
    return pb.ToolCall(
        id=call.id, type="function", name=call.name, arguments=call.arguments, index=call.index
    )


def logprobs_pb(items: tuple[TokenLogprob, ...] | None) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token=t.token,
            bytes=t.bytes,
            logprob=t.logprob,
            token_id=t.token_id,
            top=[
                pb.TopLogprob(token=a.token, bytes=a.bytes, logprob=a.logprob, token_id=a.token_id)
                for a in t.top
            ],
        )
        for t in items or ()
    ]
