"""OpenAI request bodies -> the gRPC GenerateRequest the servicer takes.

`/v1/chat/completions`: messages (content as a string or parts: text, `image_url`, `input_audio`,
`audio_url`, `video_url`, media as base64 data URLs), sampling fields, `response_format`, `tools`,
`tool_choice`, `parallel_tool_calls`, `logprobs` + `top_logprobs`, `modalities` + `audio` (a spoken
reply), Ring's thinking switch
(`chat_template_kwargs.enable_thinking`, as vLLM and SGLang take it) and `thinking_budget`.
`/v1/completions`: one prompt string, `logprobs` as the number of alternatives. Both map log-probabilities
onto `sampling.logprobs` (up to MAX_LOGPROBS alternatives, beyond OpenAI's 5 for completions). Fields
OpenAI has and this server does not implement are refused by name (400), never silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from gateway.api import pb
from gateway.http_api.errors import bad_request
from gateway.http_api.fields import Fields
from pipelines.protocol import MAX_LOGPROBS

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MEDIA_PARTS = {"image_url": "image", "audio_url": "audio", "video_url": "video"}
SPOKEN_FORMATS = {"wav": "wav", "pcm16": "pcm", "pcm": "pcm", "opus": "opus"}  # OpenAI's -> ours
AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg"}


def chat_request(body: dict[str, Any]) -> tuple[pb.GenerateRequest, bool, bool]:
    """(the GenerateRequest, stream?, include usage in the stream?) of a chat completions body."""
    f = Fields(body)
    f.refuse("functions", "function_call", why="is deprecated by OpenAI: send tools and tool_choice")
    f.refuse("prediction", "web_search_options")
    req = pb.GenerateRequest(model=f.require("model", str))
    messages = f.require("messages", list)
    req.messages.extend(_message(Fields(m, f"messages[{i}]")) for i, m in enumerate(messages))
    req.sampling.CopyFrom(_sampling(f, max_tokens_keys=("max_completion_tokens", "max_tokens")))
    top = f.get("top_logprobs", int)
    if f.get("logprobs", bool, default=False):
        req.sampling.logprobs = _alternatives(0 if top is None else top, "top_logprobs")
    elif top is not None:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    _reasoning(f, req)
    _structured(f, req)
    _spoken(f, req)
    _extras(f, req)
    stream = f.get("stream", bool, default=False)
    options = f.sub("stream_options")
    usage = bool(options and options.get("include_usage", bool, default=False))
    if options is not None and not stream:
        raise bad_request("stream_options needs stream: true", "stream_options")
    return req, stream, usage


def completion_request(body: dict[str, Any]) -> tuple[pb.GenerateRequest, bool, bool]:
    """(the GenerateRequest, stream?, include usage?) of a completions body (one prompt string)."""
    f = Fields(body)
    f.refuse("echo", "suffix")
    best_of = f.get("best_of", int)
    if best_of not in (None, 1) and best_of != f.get("n", int, default=1):
        raise bad_request("best_of other than n is not supported", "best_of")
    prompt = f.require("prompt", str, list)
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise bad_request("prompt must be a string (or a list holding one string)", "prompt")
        prompt = prompt[0]
    req = pb.GenerateRequest(model=f.require("model", str), prompt=prompt)
    req.sampling.CopyFrom(_sampling(f, max_tokens_keys=("max_tokens",), default_max_tokens=16))
    alternatives = f.get("logprobs", int)
    if alternatives is not None:
        req.sampling.logprobs = _alternatives(alternatives, "logprobs")
    _extras(f, req)
    stream = f.get("stream", bool, default=False)
    options = f.sub("stream_options")
    return req, stream, bool(options and options.get("include_usage", bool, default=False))


# ---- messages ------------------------------------------------------------------------------------
def _message(m: Fields) -> pb.Message:
    role = m.require("role", str)
    if role not in ROLES:
        raise bad_request(
            f"{m.name('role')} must be one of {', '.join(ROLES)}, got {role[:40]!r}", m.name("role")
        )
    msg = pb.Message(role=ROLES[role])
    content = m.get("content", str, list)
    if isinstance(content, str):
        msg.content.append(pb.ContentPart(text=content))
    elif isinstance(content, list):
        msg.content.extend(_part(Fields(p, f"{m.name('content')}[{i}]")) for i, p in enumerate(content))
    for i, call in enumerate(m.get("tool_calls", list, default=[])):
        c = Fields(call, f"{m.name('tool_calls')}[{i}]")
        fn = c.sub("function") or Fields({}, c.name("function"))
        msg.tool_calls.append(
            pb.ToolCall(
                id=c.get("id", str, default=""),
                type=c.get("type", str, default="function"),
                name=fn.require("name", str),
                arguments=fn.get("arguments", str, default="{}"),
                index=i,
            )
        )
    msg.tool_call_id = m.get("tool_call_id", str, default="")
    return msg


def _part(p: Fields) -> pb.ContentPart:
    kind = p.require("type", str)
    if kind == "text":
        return pb.ContentPart(text=p.require("text", str))
    if kind in MEDIA_PARTS:
        url = (p.sub(kind) or Fields({}, p.name(kind))).require("url", str)
        media = _data_url(url, p.name(f"{kind}.url"))
        return pb.ContentPart(**{MEDIA_PARTS[kind]: media})
    if kind == "input_audio":
        audio = p.sub("input_audio") or Fields({}, p.name("input_audio"))
        fmt = audio.get("format", str, default="")
        data = _base64(audio.require("data", str), audio.name("data"))
        return pb.ContentPart(audio=pb.Media(data=data, mime_type=AUDIO_FORMATS.get(fmt, "")))
    kinds = ", ".join(["text", *MEDIA_PARTS, "input_audio"])
    raise bad_request(f"{p.name('type')} must be one of {kinds}, got {kind[:40]!r}", p.name("type"))


def _data_url(url: str, name: str) -> pb.Media:
    """A `data:<mime>;base64,<data>` URL's bytes (the gateway fetches nothing from the network)."""
    if not url.startswith("data:"):
        raise bad_request(f"{name} must be a base64 data URL (data:<mime type>;base64,...)", name)
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        raise bad_request(f"{name} must be a base64 data URL (data:<mime type>;base64,...)", name)
    return pb.Media(data=_base64(data, name), mime_type=head[: -len(";base64")])


def _base64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{name} is not valid base64", name) from None


# ---- sampling and options --------------------------------------------------------------------------
def _sampling(
    f: Fields, max_tokens_keys: tuple[str, ...], default_max_tokens: int | None = None
) -> pb.SamplingParams:
    s = pb.SamplingParams()
    given = [f.get(k, int) for k in max_tokens_keys]  # the first one set wins
    max_tokens = next((m for m in given if m is not None), default_max_tokens)
    if max_tokens is not None:
        s.max_tokens = max_tokens
    for key in (
        "temperature",
        "top_p",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
    ):
        value = f.get(key, float)
        if value is not None:
            setattr(s, key, value)
    for key in ("top_k", "seed", "n", "min_tokens"):
        value = f.get(key, int)
        if value is not None:
            setattr(s, key, value)
    if f.get("ignore_eos", bool) is not None:
        s.ignore_eos = f.get("ignore_eos", bool)
    stop = f.get("stop", str, list)
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not all(isinstance(x, str) for x in stops):
            raise bad_request("stop must be a string or an array of strings", "stop")
        s.stop.extend(stops)
    ids = f.get("stop_token_ids", list, default=[])
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
        raise bad_request("stop_token_ids must be an array of integers", "stop_token_ids")
    s.stop_token_ids.extend(ids)
    return s


def _alternatives(k: int, name: str) -> int:
    """How many top alternatives per token `name` asks for, checked here so the error names it."""
    if not 0 <= k <= MAX_LOGPROBS:
        raise bad_request(f"{name} must be in [0, {MAX_LOGPROBS}], got {k}", name)
    return k


def _reasoning(f: Fields, req: pb.GenerateRequest) -> None:
    kwargs = f.sub("chat_template_kwargs")
    thinking = kwargs.get("enable_thinking", bool) if kwargs else None
    budget = f.get("thinking_budget", int)
    if thinking is not None:
        req.reasoning.enable_thinking = thinking
    if budget is not None:
        req.reasoning.thinking_budget = budget


def _structured(f: Fields, req: pb.GenerateRequest) -> None:
    fmt = f.sub("response_format")
    if fmt is not None:
        out = req.response_format
        out.type = fmt.require("type", str)
        schema = fmt.sub("json_schema")
        if schema is not None:
            out.json_schema.name = schema.get("name", str, default="")
            out.json_schema.description = schema.get("description", str, default="")
            out.json_schema.strict = schema.get("strict", bool, default=False)
            out.json_schema.schema = _json_text(schema.get("schema", dict, bool, default={}))
        out.regex = fmt.get("regex", str, default="")
    for i, tool in enumerate(f.get("tools", list, default=[])):
        t = Fields(tool, f"tools[{i}]")
        fn = t.sub("function") or Fields({}, t.name("function"))
        req.tools.append(
            pb.Tool(
                type=t.get("type", str, default="function"),
                function=pb.FunctionDefinition(
                    name=fn.require("name", str),
                    description=fn.get("description", str, default=""),
                    parameters=_json_text(fn.get("parameters", dict, default={"type": "object"})),
                    strict=fn.get("strict", bool, default=False),
                ),
            )
        )
    choice = f.get("tool_choice", str, dict)
    if isinstance(choice, str):
        req.tool_choice.mode = choice
    elif isinstance(choice, dict):
        c = Fields(choice, "tool_choice")
        fn = c.sub("function") or Fields({}, "tool_choice.function")
        req.tool_choice.mode = "function"
        req.tool_choice.function_name = fn.require("name", str)
    parallel = f.get("parallel_tool_calls", bool)
    if parallel is not None:
        req.parallel_tool_calls = parallel


def _spoken(f: Fields, req: pb.GenerateRequest) -> None:
    """`modalities: ["text", "audio"]` with `audio: {voice, format}`: the reply is also spoken (Ming's
    talker), as OpenAI's audio chat and the omni servers take it."""
    modalities = f.get("modalities", list, default=["text"])
    if sorted(modalities) not in (["text"], ["audio", "text"]):
        raise bad_request('modalities must be ["text"] or ["text", "audio"]', "modalities")
    audio = f.sub("audio")
    if "audio" not in modalities:
        if audio is not None:
            raise bad_request('audio needs modalities ["text", "audio"]', "audio")
        return
    if audio is None:
        raise bad_request('modalities ["text", "audio"] needs audio: {"voice", "format"}', "audio")
    fmt = audio.get("format", str, default="wav")
    if fmt not in SPOKEN_FORMATS:
        raise bad_request(
            f"audio.format must be one of {', '.join(SPOKEN_FORMATS)}, got {fmt!r:.40}", "audio.format"
        )
    req.speech.voice = audio.get("voice", str, default="")
    req.speech.format = SPOKEN_FORMATS[fmt]
    for key in ("speed", "temperature", "guidance_scale"):
        value = audio.get(key, float)
        if value is not None:
            setattr(req.speech, key, value)
    seed = audio.get("seed", int)
    if seed is not None:
        req.speech.seed = seed


def _extras(f: Fields, req: pb.GenerateRequest) -> None:
    """Fields beyond OpenAI's that vLLM / SGLang also take: request_id, priority."""
    req.request_id = f.get("request_id", str, default="")
    req.priority = f.get("priority", int, default=0)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
