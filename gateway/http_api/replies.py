"""The servicer's replies -> OpenAI's response objects and stream chunks.

Chat: `chat.completion` with one choice per sample (`message.content`, `message.reasoning_content`
for Ring's reasoning, as vLLM and SGLang return it, `message.tool_calls`), usage with
`completion_tokens_details.reasoning_tokens` and `prompt_tokens_details.cached_tokens`. Streamed:
`chat.completion.chunk`s, the first delta of each choice carrying `role`, a choice's last one its
finish_reason; with `stream_options.include_usage` every chunk has `usage: null` and one more chunk
(no choices) carries the totals. Completions: `text_completion` likewise. A spoken reply is OpenAI's
`message.audio` (the clip base64 and its `transcript`; `content` null), streamed as `delta.audio`.

Log-probabilities, where the reply has them (else `logprobs: null`): chat
`{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal": null}`;
completions `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}` (the top dict also
holds the sampled token, as OpenAI's does; offsets count from the start of the choice's text). A
chunk carries those of the tokens it reports; a logprob below -9999 is given as -9999, as OpenAI does.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from gateway.api import pb


def usage(u: pb.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def tool_calls(calls: Any, stream: bool = False) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        call = {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        out.append({"index": c.index, **call} if stream else call)
    return out


MIN_LOGPROB = -9999.0


def _lp(value: float) -> float:
    return max(value, MIN_LOGPROB)


def chat_logprobs(items: Any) -> dict[str, Any] | None:
    """A chat choice's `logprobs` object, None when there are none."""
    if not items:
        return None

    def one(t: Any) -> dict[str, Any]:
        return {"token": t.token, "logprob": _lp(t.logprob), "bytes": list(t.bytes)}

    return {"content": [{**one(t), "top_logprobs": [one(a) for a in t.top]} for t in items], "refusal": None}


def completion_logprobs(items: Any, offset: int = 0) -> dict[str, Any] | None:
    """A completion choice's `logprobs` object (its tokens' text offsets from `offset`), None when none."""
    if not items:
        return None
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [_lp(t.logprob) for t in items],
        "top_logprobs": [
            {**{a.token: _lp(a.logprob) for a in t.top}, t.token: _lp(t.logprob)} for t in items
        ],
        "text_offset": offsets,
    }


def chat_completion(resp: pb.GenerateResponse) -> dict[str, Any]:
    choices = []
    for c in resp.choices:
        message: dict[str, Any] = {"role": "assistant", "content": c.text or (None if c.tool_calls else "")}
        if c.reasoning_text:
            message["reasoning_content"] = c.reasoning_text
        if c.tool_calls:
            message["tool_calls"] = tool_calls(c.tool_calls)
        if c.index == 0 and resp.HasField("speech"):  # OpenAI's shape: the words are the transcript
            message["audio"] = spoken_audio(resp.request_id, resp.speech, c.text)
            message["content"] = None
        logprobs = chat_logprobs(c.logprobs)
        choices.append(
            {"index": c.index, "message": message, "finish_reason": c.finish_reason, "logprobs": logprobs}
        )
    return {
        "id": f"chatcmpl-{resp.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": resp.model,
        "choices": choices,
        "usage": usage(resp.usage),
    }


AUDIO_KEPT_S = 3600  # `expires_at` of a spoken reply (OpenAI's field; nothing is stored here)


def spoken_audio(request_id: str, speech: pb.SynthesizeSpeechResponse, transcript: str) -> dict[str, Any]:
    """`message.audio` of a spoken reply: the whole clip, base64, and what it says."""
    return {
        "id": f"audio_{request_id}",
        "data": base64.b64encode(speech.audio).decode(),
        "expires_at": int(time.time()) + AUDIO_KEPT_S,
        "transcript": transcript,
        "format": speech.format,
        "sample_rate": speech.sample_rate,
    }


def completion(resp: pb.GenerateResponse) -> dict[str, Any]:
    return {
        "id": f"cmpl-{resp.request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": resp.model,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "finish_reason": c.finish_reason,
                "logprobs": completion_logprobs(c.logprobs),
            }
            for c in resp.choices
        ],
        "usage": usage(resp.usage),
    }


class ChunkWriter:
    """GenerateChunks of one call -> server-sent events (`data: {...}\\n\\n`, then `data: [DONE]`)."""

    def __init__(self, model: str, chat: bool, include_usage: bool, spoken: bool = False) -> None:
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.spoken = spoken  # a spoken reply: text deltas are `delta.audio.transcript`, as OpenAI's
        self.created = int(time.time())
        self.started: set[int] = set()  # choices whose first delta (with the role) went out
        self.offsets: dict[int, int] = {}  # completions: each choice's text length in its logprobs so far
        self.id = ""

    def events(self, chunk: pb.GenerateChunk) -> list[bytes]:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{chunk.request_id}"
        out = []
        if chunk.text or chunk.reasoning_text or chunk.tool_calls or chunk.logprobs or chunk.audio.audio:
            out.append(self._choice(chunk.index, self._delta(chunk), None, self._logprobs(chunk)))
        if chunk.finish_reason:
            out.append(self._choice(chunk.index, {} if self.chat else "", chunk.finish_reason))
        if chunk.HasField("usage") and self.include_usage:
            out.append(self._frame([], usage(chunk.usage)))
        return out

    def _delta(self, chunk: pb.GenerateChunk) -> Any:
        if not self.chat:
            return chunk.text
        delta: dict[str, Any] = {}
        if chunk.index not in self.started:
            self.started.add(chunk.index)
            delta["role"] = "assistant"
        if chunk.reasoning_text:
            delta["reasoning_content"] = chunk.reasoning_text
        if chunk.text and self.spoken:
            delta["audio"] = {"id": f"audio_{chunk.request_id}", "transcript": chunk.text}
        elif chunk.text:
            delta["content"] = chunk.text
        if chunk.audio.audio:  # raw 16-bit PCM for wav and pcm (no header), Ogg pages for opus
            audio = delta.setdefault("audio", {"id": f"audio_{chunk.request_id}"})
            audio["data"] = base64.b64encode(chunk.audio.audio).decode()
        if chunk.tool_calls:
            delta["tool_calls"] = tool_calls(chunk.tool_calls, stream=True)
        return delta

    def _logprobs(self, chunk: pb.GenerateChunk) -> dict[str, Any] | None:
        if self.chat:
            return chat_logprobs(chunk.logprobs)
        offset = self.offsets.get(chunk.index, 0)
        self.offsets[chunk.index] = offset + sum(len(t.token) for t in chunk.logprobs)
        return completion_logprobs(chunk.logprobs, offset)

    def _choice(
        self, index: int, delta: Any, finish_reason: str | None, logprobs: dict[str, Any] | None = None
    ) -> bytes:
        if self.chat:
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": delta, "finish_reason": finish_reason, "logprobs": logprobs}
        return self._frame([choice], None)

    def _frame(self, choices: list[dict[str, Any]], totals: dict[str, Any] | None) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            obj["usage"] = totals
        return sse(obj)


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
