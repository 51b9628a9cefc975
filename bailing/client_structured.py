"""Structured output and tool calling in the client: the request fields, and the calls a reply makes.

Flow: OpenAI-shaped `response_format`, `tools`, `tool_choice`, `parallel_tool_calls` and the
`tool_calls` / `tool_call_id` of chat turns -> checked -> bailing.v1 `ResponseFormat`, `Tool`s,
`ToolChoice`, `ToolCall`s (schemas and arguments given as dicts travel as JSON text); a reply's
`ToolCall` messages -> `ToolCall` dataclasses. Bad input raises `BailingArgumentError` (a ValueError)
naming the argument; what only the gateway can judge (is it a usable JSON schema?) it checks itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from bailing.client_errors import invalid_argument
from gateway.api import pb

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a function's or a schema's name (as the gateway checks it)
TOOL_CHOICE_MODES = ("auto", "none", "required")  # or {"type": "function", "function": {"name": ...}}
# response_format["type"] -> the keys that type takes
RESPONSE_FORMAT_KEYS = {
    "text": {"type"},
    "json_object": {"type"},
    "json_schema": {"type", "json_schema"},
    "regex": {"type", "regex"},
}
JSON_SCHEMA_KEYS = {"name", "schema", "strict", "description"}
TOOL_KEYS, FUNCTION_KEYS = {"type", "function"}, {"name", "description", "parameters", "strict"}
TOOL_CALL_KEYS, CALLED_FUNCTION_KEYS = {"id", "type", "function", "index"}, {"name", "arguments"}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: `arguments` is JSON text of an object (`json.loads(call.arguments)`).
    An assistant turn may carry these back as its `tool_calls`."""

    id: str
    name: str
    arguments: str
    index: int = 0  # its place among the choice's calls


class StructuredOptions(TypedDict, total=False):
    """The keyword options of `generate`/`stream` that shape the answer (OpenAI's shapes)."""

    # {"type": "text" | "json_object"}, {"type": "json_schema", "json_schema": {"name", "schema"
    # (a dict or JSON text), "strict", "description"}} or {"type": "regex", "regex": PATTERN}
    response_format: Mapping[str, Any]
    # [{"type": "function", "function": {"name", "description", "parameters" (dict or JSON text)}}]
    tools: Iterable[Mapping[str, Any]]
    # "auto", "none", "required" or {"type": "function", "function": {"name": NAME}}
    tool_choice: str | Mapping[str, Any]
    parallel_tool_calls: bool | None  # False: at most one call per reply (default: any number)


# ---- request fields --------------------------------------------------------------------------
def set_structured_fields(
    request: Any,
    chat: bool,
    response_format: Mapping[str, Any] | None = None,
    tools: Iterable[Mapping[str, Any]] | None = None,
    tool_choice: str | Mapping[str, Any] | None = None,
    parallel_tool_calls: bool | None = None,
) -> None:
    """Fill `request` (a `GenerateRequest`; `chat`: it has messages, not a prompt) with the options given."""
    if response_format is not None:
        request.response_format.CopyFrom(response_format_to_pb(response_format))
    if tools is not None:
        request.tools.extend(tools_to_pb(tools))
        if request.tools and not chat:
            raise invalid_argument("tools", "tools need a chat request (messages), not a prompt")
    if tool_choice is not None:
        request.tool_choice.CopyFrom(tool_choice_to_pb(tool_choice, [t.function.name for t in request.tools]))
    if parallel_tool_calls is not None:
        if not isinstance(parallel_tool_calls, bool):
            got = type(parallel_tool_calls).__name__
            raise invalid_argument("parallel_tool_calls", f"True, False or None is required, got {got}")
        request.parallel_tool_calls = parallel_tool_calls


def response_format_to_pb(value: Mapping[str, Any]) -> Any:
    """A `ResponseFormat` from {"type": ..., and that type's keys}."""
    if not isinstance(value, Mapping):
        raise invalid_argument("response_format", f"a dict is required, got {type(value).__name__}")
    kind = value.get("type")
    if kind not in RESPONSE_FORMAT_KEYS:
        raise invalid_argument(
            "response_format.type", f"one of {', '.join(RESPONSE_FORMAT_KEYS)}, got {kind!r}"
        )
    _check_keys("response_format", value, RESPONSE_FORMAT_KEYS[kind])
    if kind == "json_schema":
        return pb.ResponseFormat(type=kind, json_schema=_json_schema_to_pb(value.get("json_schema")))
    if kind == "regex":
        pattern = value.get("regex")
        if not isinstance(pattern, str) or not pattern:
            raise invalid_argument("response_format.regex", "a non-empty pattern (a string) is required")
        return pb.ResponseFormat(type=kind, regex=pattern)
    return pb.ResponseFormat(type=kind)


def _json_schema_to_pb(value: Any) -> Any:
    where = "response_format.json_schema"
    if not isinstance(value, Mapping):
        raise invalid_argument(where, f'a dict with "schema" is required, got {type(value).__name__}')
    _check_keys(where, value, JSON_SCHEMA_KEYS)
    if value.get("schema") is None:
        raise invalid_argument(f"{where}.schema", "a JSON schema (a dict or JSON text) is required")
    return pb.JsonSchema(
        name=_optional_name(f"{where}.name", value.get("name")),
        schema=json_text(f"{where}.schema", value["schema"], (dict, bool)),
        strict=_optional(f"{where}.strict", value.get("strict"), bool, False),
        description=_optional(f"{where}.description", value.get("description"), str, ""),
    )


def tools_to_pb(tools: Iterable[Mapping[str, Any]]) -> list[Any]:
    """`Tool`s from a list of {"type": "function", "function": {...}}; names must be distinct."""
    if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Iterable):
        raise invalid_argument("tools", f"a list of tools is required, got {type(tools).__name__}")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        out.append(_tool_to_pb(f"tools[{i}]", tool))
        name = out[-1].function.name
        if name in seen:
            raise invalid_argument(f"tools[{i}].function.name", f"{name!r} is used by an earlier tool")
        seen.add(name)
    return out


def _tool_to_pb(where: str, tool: Any) -> Any:
    if not isinstance(tool, Mapping):
        raise invalid_argument(where, f"a tool is a dict, got {type(tool).__name__}")
    _check_keys(where, tool, TOOL_KEYS)
    if tool.get("type", "function") != "function":
        raise invalid_argument(f"{where}.type", f"'function' is required, got {tool.get('type')!r}")
    function = tool.get("function")
    if not isinstance(function, Mapping):
        raise invalid_argument(f"{where}.function", '{"name", "description", "parameters"} is required')
    _check_keys(f"{where}.function", function, FUNCTION_KEYS)
    parameters = function.get("parameters")
    return pb.Tool(
        type="function",
        function=pb.FunctionDefinition(
            name=_name(f"{where}.function.name", function.get("name")),
            description=_optional(f"{where}.function.description", function.get("description"), str, ""),
            parameters="" if parameters is None else json_text(f"{where}.function.parameters", parameters),
            strict=_optional(f"{where}.function.strict", function.get("strict"), bool, False),
        ),
    )


def tool_choice_to_pb(value: str | Mapping[str, Any], names: list[str]) -> Any:
    """A `ToolChoice` from "auto" / "none" / "required" / {"type": "function", "function": {"name"}};
    `names` are the request's tools."""
    if isinstance(value, str) and value in TOOL_CHOICE_MODES:
        if value == "required" and not names:
            raise invalid_argument("tool_choice", "'required' needs tools")
        return pb.ToolChoice(mode=value)
    function = value.get("function") if isinstance(value, Mapping) else None
    if (
        not isinstance(value, Mapping)
        or set(value) - {"type", "function"}
        or value.get("type", "function") != "function"
        or not isinstance(function, Mapping)
        or set(function) != {"name"}
    ):
        raise invalid_argument(
            "tool_choice",
            f"'auto', 'none', 'required' or {{'type': 'function', 'function': {{'name': NAME}}}} is "
            f"required, got {value!r}"[:300],
        )
    name = _name("tool_choice.function.name", function["name"])
    if name not in names:
        tools = ", ".join(names) if names else "there are none"
        raise invalid_argument("tool_choice.function.name", f"{name!r} is not among the tools ({tools})")
    return pb.ToolChoice(mode="function", function_name=name)


def message_tool_fields(where: str, role: str, message: Mapping[str, Any]) -> tuple[list[Any], str]:
    """A chat turn's `tool_calls` (an assistant's: OpenAI-shaped dicts or `ToolCall`s) as `ToolCall`
    messages, and its `tool_call_id` (a tool turn's)."""
    calls, call_id = message.get("tool_calls"), message.get("tool_call_id")
    if calls and role != "assistant":
        raise invalid_argument(
            f"{where}.tool_calls", f"only an assistant turn makes calls (role is {role!r})"
        )
    if call_id is not None and not isinstance(call_id, str):
        raise invalid_argument(f"{where}.tool_call_id", f"a string is required, got {type(call_id).__name__}")
    if call_id and role != "tool":
        raise invalid_argument(f"{where}.tool_call_id", f"goes with role 'tool', not {role!r}")
    if calls is None:
        return [], call_id or ""
    if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Iterable):
        raise invalid_argument(
            f"{where}.tool_calls", f"a list of calls is required, got {type(calls).__name__}"
        )
    return [_call_to_pb(f"{where}.tool_calls[{j}]", j, c) for j, c in enumerate(calls)], call_id or ""


def _call_to_pb(where: str, index: int, call: Any) -> Any:
    if isinstance(call, ToolCall):
        call = {"id": call.id, "function": {"name": call.name, "arguments": call.arguments}}
    if not isinstance(call, Mapping):
        raise invalid_argument(where, f"a call is a dict or a ToolCall, got {type(call).__name__}")
    _check_keys(where, call, TOOL_CALL_KEYS)
    if call.get("type", "function") != "function":
        raise invalid_argument(f"{where}.type", f"'function' is required, got {call.get('type')!r}")
    function = call.get("function")
    if not isinstance(function, Mapping):
        raise invalid_argument(f"{where}.function", '{"name", "arguments"} is required')
    _check_keys(f"{where}.function", function, CALLED_FUNCTION_KEYS)
    arguments = function.get("arguments")
    return pb.ToolCall(
        id=_optional(f"{where}.id", call.get("id"), str, ""),
        type="function",
        name=_name(f"{where}.function.name", function.get("name")),
        arguments="{}" if arguments is None else json_text(f"{where}.function.arguments", arguments, (dict,)),
        index=index,
    )


# ---- helpers ---------------------------------------------------------------------------------
def json_text(where: str, value: Any, kinds: tuple[type, ...] = (dict,)) -> str:
    """`value` as JSON text: a dict (or another of `kinds`) serialised, or JSON text checked to hold one."""
    wanted = " or ".join("an object" if k is dict else "true/false" for k in kinds)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise invalid_argument(where, f"not JSON text: {exc}") from None
        if not isinstance(parsed, kinds):
            raise invalid_argument(where, f"the JSON must be {wanted}, got {type(parsed).__name__}")
        return value
    if not isinstance(value, kinds):
        raise invalid_argument(
            where, f"a dict or JSON text of {wanted} is required, got {type(value).__name__}"
        )
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise invalid_argument(where, f"not JSON-serialisable: {exc}") from None


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise invalid_argument(where, f"letters, digits, _ and - (1 to 64) are required, got {value!r}"[:300])
    return value


def _optional_name(where: str, value: Any) -> str:
    return "" if value is None else _name(where, value)


def _optional(where: str, value: Any, kind: type, default: Any) -> Any:
    if value is None:
        return default
    if not isinstance(value, kind):
        raise invalid_argument(where, f"a {kind.__name__} is required, got {type(value).__name__}")
    return value


def _check_keys(where: str, value: Mapping[str, Any], known: set[str]) -> None:
    unknown = set(value) - known
    if unknown:
        raise invalid_argument(where, f"unknown key(s) {sorted(map(str, unknown))}; known: {sorted(known)}")


# ---- reply -----------------------------------------------------------------------------------
def tool_calls_from_pb(calls: Iterable[Any]) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(c.id, c.name, c.arguments, c.index) for c in calls)


def tool_calls_to_pb(calls: Iterable[ToolCall]) -> list[Any]:
    """The `ToolCall` messages the calls came from (for writing results as JSON)."""
    return [
        pb.ToolCall(id=c.id, type="function", name=c.name, arguments=c.arguments, index=c.index)
        for c in calls
    ]
