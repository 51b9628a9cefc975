"""The data of the client API (results) and its conversion to and from bailing.v1 messages.

Flow: chat messages (dicts with text or media parts, tool calls) + options -> `build_request` ->
`GenerateRequest`; responses -> `Completion` (with its `Choice`s and `ToolCall`s) / `Chunk` /
`ModelInfo`; `grpc.RpcError` -> `BailingClientError` (errors: `bailing.client_errors`). Structured
output and tool calls live in `bailing.client_structured`, batch jobs in `bailing.client_batch`, image
generation in `bailing.client_image`, speech synthesis (and the audio of spoken replies) in
`bailing.client_speech`. `bailing.client` re-exports the public names; protobuf types never leave
these modules and the client.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import grpc
from grpc_health.v1 import health_pb2

from bailing.client_errors import BailingClientError, BailingConnectionError, invalid_argument
from bailing.client_structured import (
    StructuredOptions,
    ToolCall,
    message_tool_fields,
    set_structured_fields,
    tool_calls_from_pb,
)
from gateway.api import OPTIONAL_SAMPLING_FIELDS, pb
from pipelines.protocol import TokenLogprob, TopLogprob, Usage  # the same data the workers report

if TYPE_CHECKING:
    from bailing.client_speech import AudioChunk, SpeechResult

MEDIA_TYPES = ("image", "audio", "video")
# First bytes of common media files, for parts given as bytes without a mime type.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"WAVE", 8, "audio/wav"),
    (b"fLaC", 0, "audio/flac"),
    (b"OggS", 0, "audio/ogg"),
    (b"ID3", 0, "audio/mpeg"),
    (b"ftyp", 4, "video/mp4"),
    (b"\x1aE\xdf\xa3", 0, "video/webm"),
)


# ---- options and results -----------------------------------------------------------------------
class SamplingOptions(TypedDict, total=False):
    """Keyword options every request takes (generate, stream, transcribe); unset ones take the
    model's defaults."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    stop: str | Iterable[str]
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    min_tokens: int
    ignore_eos: bool
    stop_token_ids: Iterable[int]
    request_id: str
    priority: int


class RequestOptions(SamplingOptions, StructuredOptions, total=False):
    """The keyword options of `generate`/`stream`: `SamplingOptions`, `StructuredOptions` (response_format,
    tools, tool_choice, parallel_tool_calls) and these."""

    n: int  # samples to draw, 1..16 (default 1); see `Completion.choices`, `Chunk.index`
    enable_thinking: bool
    thinking_budget: int
    # diffusion models (llada2): block_length, steps, threshold, decoder, low_threshold,
    # eos_early_stop, prefix_cache (see DiffusionOptions in the proto)
    diffusion: Mapping[str, Any]
    # a spoken reply (models with audio output): voice, format, sample_rate, speed, seed,
    # temperature, guidance_scale, instruction (see SpeechOptions in the proto); {} = the defaults
    speech: Mapping[str, Any]


@dataclass(frozen=True)
class Timing:
    queue_s: float = 0.0  # gateway accept -> a worker started the request
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True)
class Choice:
    """One of the n samples of a request."""

    index: int  # 0..n-1
    text: str
    reasoning_text: str
    finish_reason: str  # stop, length, tool_calls, cancelled, error
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    tool_calls: tuple[ToolCall, ...] = ()  # the calls it made (finish_reason "tool_calls")
    logprobs: tuple[TokenLogprob, ...] = ()  # its answer tokens' (the request set `logprobs`)


@dataclass(frozen=True)
class Completion:
    """A whole answer; text, reasoning_text, finish_reason and tool_calls are choice 0's, usage sums all
    choices."""

    request_id: str
    model: str
    text: str
    reasoning_text: str
    finish_reason: str  # stop, length, tool_calls, cancelled, error
    usage: Usage
    timing: Timing
    choices: tuple[Choice, ...] = ()  # every choice in index order (n = 1: one)
    speech: SpeechResult | None = None  # a spoken reply's whole clip (the request set `speech`)
    tool_calls: tuple[ToolCall, ...] = ()  # choice 0's calls
    logprobs: tuple[TokenLogprob, ...] = ()  # choice 0's


@dataclass(frozen=True)
class Chunk:
    """Part of a streamed answer. With n > 1 the deltas of the choices interleave (`index` says whose);
    after them comes one chunk per choice with its finish_reason, the last one also carrying usage."""

    request_id: str
    text: str  # delta
    reasoning_text: str  # delta
    finish_reason: str = ""  # set on a choice's finish chunk only
    usage: Usage | None = None  # set on the last chunk only
    index: int = 0  # the choice the delta or finish_reason belongs to
    audio: AudioChunk | None = None  # a spoken reply's audio (its last: `last`, with the summary)
    tool_calls: tuple[ToolCall, ...] = ()  # calls of choice `index` done since its last chunk, whole
    logprobs: tuple[TokenLogprob, ...] = ()  # of choice `index`'s answer tokens decided since its last


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    live_workers: int
    max_model_len: int
    modalities: tuple[str, ...]  # inputs it accepts: text, image, audio, video
    outputs: tuple[str, ...] = ()  # what it produces: text, image, audio (empty: no live worker says)
    voices: tuple[str, ...] = ()  # voice presets of its talker (models with audio output)


# ---- request building ------------------------------------------------------------------------
def _guess_mime(data: bytes, path: str | Path | None) -> str:
    if path is not None:
        guessed, _ = mimetypes.guess_type(str(path))
        if guessed:
            return guessed
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    return ""


def media_part(kind: str, part: Mapping[str, Any], where: str) -> Any:
    """A `ContentPart` of `kind` from {"path"} or {"data", "mime_type"?}; the mime type is guessed
    from the file name, then from the bytes, when not given."""
    path = part.get("path")
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise invalid_argument(where, f"cannot read {path}: {exc.strerror or exc}") from None
    else:
        data = part.get("data")
        if not isinstance(data, bytes | bytearray | memoryview):
            article = "an" if kind[0] in "aeiou" else "a"
            raise invalid_argument(where, f"{article} {kind} part needs 'data' (bytes) or 'path'")
        data = bytes(data)
    mime = part.get("mime_type") or _guess_mime(data, path)
    if not isinstance(mime, str):
        raise invalid_argument(where, "'mime_type' must be a string")
    return pb.ContentPart(**{kind: pb.Media(data=data, mime_type=mime)})


def _content_part(part: Any, where: str) -> Any:
    if isinstance(part, str):
        return pb.ContentPart(text=part)
    if not isinstance(part, Mapping):
        raise invalid_argument(where, f"a content part is a dict or a string, got {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise invalid_argument(where, "a text part needs 'text' (a string)")
        return pb.ContentPart(text=part["text"])
    if kind in MEDIA_TYPES:
        return media_part(kind, part, where)
    raise invalid_argument(where, f"unknown part type {kind!r} (text, image, audio, video)")


def messages_to_pb(messages: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Chat messages ({"role", "content": str | [parts]}; an assistant turn's "tool_calls", whose content
    may be empty or None; a tool turn's "tool_call_id") as bailing.v1 `Message`s."""
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise invalid_argument(where, f"a message is a dict, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise invalid_argument(f"{where}.role", "a non-empty string is required")
        calls, call_id = message_tool_fields(where, role, message)
        if calls and not content:
            parts = []
        elif isinstance(content, str):
            parts = [pb.ContentPart(text=content)]
        elif isinstance(content, list | tuple):
            parts = [_content_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
        else:
            raise invalid_argument(f"{where}.content", "a string or a list of parts is required")
        out.append(pb.Message(role=role, content=parts, tool_calls=calls, tool_call_id=call_id))
    if not out:
        raise invalid_argument("messages", "at least one message is required")
    return out


def sampling_to_pb(
    stop: str | Iterable[str] | None, stop_token_ids: Iterable[int] | None, sampling: Mapping[str, Any]
) -> Any:
    """`SamplingParams` with the options that are set; an unknown keyword is a TypeError."""
    unknown = set(sampling) - set(OPTIONAL_SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    params = pb.SamplingParams(**{k: v for k, v in sampling.items() if v is not None})
    params.stop.extend([stop] if isinstance(stop, str) else list(stop or ()))
    params.stop_token_ids.extend(stop_token_ids or ())
    return params


def build_request(
    model: str,
    prompt: str | None = None,
    messages: Iterable[Mapping[str, Any]] | None = None,
    *,
    stop: str | Iterable[str] | None = None,
    stop_token_ids: Iterable[int] | None = None,
    enable_thinking: bool | None = None,
    thinking_budget: int | None = None,
    diffusion: Mapping[str, Any] | None = None,
    speech: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    priority: int = 0,
    response_format: Mapping[str, Any] | None = None,
    tools: Iterable[Mapping[str, Any]] | None = None,
    tool_choice: str | Mapping[str, Any] | None = None,
    parallel_tool_calls: bool | None = None,
    **sampling: Any,
) -> Any:
    """A `GenerateRequest`; unset options are left unset so the model's defaults apply. Bad arguments
    raise `BailingArgumentError` (a ValueError) before anything is sent."""
    if not isinstance(model, str) or not model:
        raise invalid_argument("model", "a model name is required")
    if (prompt is None) == (messages is None):
        raise invalid_argument("prompt", "give exactly one of prompt and messages")
    params = sampling_to_pb(stop, stop_token_ids, sampling)
    reasoning = pb.ReasoningOptions()
    if enable_thinking is not None:
        reasoning.enable_thinking = enable_thinking
    if thinking_budget is not None:
        reasoning.thinking_budget = thinking_budget
    request = pb.GenerateRequest(
        model=model, sampling=params, reasoning=reasoning, request_id=request_id or "", priority=priority
    )
    if diffusion is not None:
        request.diffusion.CopyFrom(options_to_pb("diffusion", pb.DiffusionOptions, diffusion))
    if speech is not None:
        request.speech.CopyFrom(options_to_pb("speech", pb.SpeechOptions, speech))
    if prompt is not None:
        if not isinstance(prompt, str):
            raise invalid_argument("prompt", f"a string is required, got {type(prompt).__name__}")
        request.prompt = prompt
    else:
        request.messages.extend(messages_to_pb(messages))
    set_structured_fields(
        request, messages is not None, response_format, tools, tool_choice, parallel_tool_calls
    )
    return request


def options_to_pb(where: str, message: Any, options: Mapping[str, Any]) -> Any:
    """`message` (an options message type) with the options that are set; unknown names are an error."""
    if not isinstance(options, Mapping):
        raise invalid_argument(where, f"a dict of options is required, got {type(options).__name__}")
    fields = message.DESCRIPTOR.fields_by_name
    unknown = set(options) - set(fields)
    if unknown:
        raise invalid_argument(where, f"unknown option(s) {sorted(unknown)}; known: {sorted(fields)}")
    return message(**{k: v for k, v in options.items() if v is not None})


# ---- response conversion ---------------------------------------------------------------------
def usage_from_pb(msg: Any) -> Usage:
    return Usage(
        msg.prompt_tokens, msg.completion_tokens, msg.reasoning_tokens, msg.cached_prompt_tokens, msg.forwards
    )


def choice_from_pb(msg: Any) -> Choice:
    return Choice(
        msg.index,
        msg.text,
        msg.reasoning_text,
        msg.finish_reason,
        msg.completion_tokens,
        msg.reasoning_tokens,
        tool_calls_from_pb(msg.tool_calls),
        logprobs_from_pb(msg.logprobs),
    )


def logprobs_from_pb(items: Any) -> tuple[TokenLogprob, ...]:
    def top(a: Any) -> TopLogprob:
        return TopLogprob(a.token_id, a.token, a.logprob, a.bytes)

    return tuple(
        TokenLogprob(t.token_id, t.token, t.logprob, t.bytes, tuple(top(a) for a in t.top)) for t in items
    )


def completion_from_pb(msg: Any) -> Completion:
    timing = Timing(msg.timing.queue_s, msg.timing.time_to_first_token_s, msg.timing.total_s)
    return Completion(
        msg.request_id,
        msg.model,
        msg.text,
        msg.reasoning_text,
        msg.finish_reason,
        usage_from_pb(msg.usage),
        timing,
        tuple(choice_from_pb(c) for c in msg.choices),
        tool_calls=tool_calls_from_pb(msg.tool_calls),
        logprobs=logprobs_from_pb(msg.logprobs),
    )


def chunk_from_pb(msg: Any) -> Chunk:
    usage = usage_from_pb(msg.usage) if msg.HasField("usage") else None
    calls, logprobs = tool_calls_from_pb(msg.tool_calls), logprobs_from_pb(msg.logprobs)
    return Chunk(
        msg.request_id,
        msg.text,
        msg.reasoning_text,
        msg.finish_reason,
        usage,
        msg.index,
        tool_calls=calls,
        logprobs=logprobs,
    )


def models_from_pb(msg: Any) -> list[ModelInfo]:
    return [
        ModelInfo(
            m.name,
            m.family,
            m.live_workers,
            m.max_model_len,
            tuple(m.modalities),
            tuple(m.outputs),
            tuple(m.voices),
        )
        for m in msg.models
    ]


def health_status_name(msg: Any) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(msg.status)


def error_from_rpc(exc: grpc.RpcError) -> BailingClientError:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    name = code.name if code is not None else "UNKNOWN"
    details = (exc.details() if callable(getattr(exc, "details", None)) else None) or "(no details)"
    if name == "UNAVAILABLE" and "failed to connect" in details.lower():
        return BailingConnectionError(name, details)
    return BailingClientError(name, details)
