"""The structured-output fields of a GenerateRequest, checked and converted before any engine work.

response_format, tools, tool_choice, parallel_tool_calls and the tool turns of `messages` ->
`ResponseFormat`, `Tool`s, `ToolChoice`, `ToolCall`s. Every problem is INVALID_ARGUMENT naming the
field: a schema must be JSON that is a valid JSON schema (`jsonschema`'s meta-schema check for its
draft) and one the grammar engine can decode with (llguidance, the same library the workers use,
asked without a tokenizer); a regex must compile there too.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from llguidance import LLMatcher

from gateway.api import pb
from gateway.errors import invalid
from pipelines.structured_spec import (
    RESPONSE_FORMATS,
    TOOL_CHOICE_MODES,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SCHEMA_BYTES = 64 * 1024  # one schema, or one tool's parameters
MAX_REGEX_CHARS = 4096
MAX_TOOLS = 128
MAX_DESCRIPTION_CHARS = 8192
MAX_ARGUMENTS_BYTES = 256 * 1024


def response_format_from_pb(req: pb.GenerateRequest) -> ResponseFormat | None:
    if not req.HasField("response_format"):
        return None
    rf = req.response_format
    kind = rf.type or "text"
    if kind not in RESPONSE_FORMATS:
        raise invalid(f"response_format.type must be one of {', '.join(RESPONSE_FORMATS)}, got {kind!r}")
    if kind == "json_schema":
        js = rf.json_schema
        if js.name and not NAME.fullmatch(js.name):
            raise invalid(f"response_format.json_schema.name must match {NAME.pattern}, got {js.name[:80]!r}")
        schema = check_schema("response_format.json_schema.schema", js.schema)
        return ResponseFormat("json_schema", json.dumps(schema), js.name, js.strict)
    if kind == "regex":
        check_regex("response_format.regex", rf.regex)
        return ResponseFormat("regex", pattern=rf.regex)
    return ResponseFormat(kind)


def tools_from_pb(req: pb.GenerateRequest) -> tuple[tuple[Tool, ...], ToolChoice, bool]:
    """(tools, tool_choice, parallel_tool_calls), checked against each other."""
    if len(req.tools) > MAX_TOOLS:
        raise invalid(f"tools has {len(req.tools)} entries; at most {MAX_TOOLS}")
    if req.tools and not req.messages:
        raise invalid("tools need a chat request (messages), not a prompt")
    tools, seen = [], set()
    for i, t in enumerate(req.tools):
        tools.append(_tool(f"tools[{i}]", t))
        if tools[-1].name in seen:
            raise invalid(f"tools[{i}].function.name {tools[-1].name!r} is used by an earlier tool")
        seen.add(tools[-1].name)
    choice = _tool_choice(req, seen)
    parallel = req.parallel_tool_calls if req.HasField("parallel_tool_calls") else True
    return tuple(tools), choice, parallel


def _tool(path: str, t: pb.Tool) -> Tool:
    if t.type not in ("", "function"):
        raise invalid(f"{path}.type must be 'function', got {t.type[:40]!r}")
    f = t.function
    if not NAME.fullmatch(f.name):
        raise invalid(f"{path}.function.name must match {NAME.pattern}, got {f.name[:80]!r}")
    if len(f.description) > MAX_DESCRIPTION_CHARS:
        raise invalid(
            f"{path}.function.description has {len(f.description)} chars; at most {MAX_DESCRIPTION_CHARS}"
        )
    params = check_schema(f"{path}.function.parameters", f.parameters) if f.parameters else {"type": "object"}
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise invalid(f"{path}.function.parameters must be the schema of an object (type 'object')")
    return Tool(f.name, f.description, json.dumps(params), f.strict)


def _tool_choice(req: pb.GenerateRequest, names: set[str]) -> ToolChoice:
    tc = req.tool_choice
    mode = tc.mode or "auto"
    if mode not in TOOL_CHOICE_MODES:
        raise invalid(f"tool_choice.mode must be one of {', '.join(TOOL_CHOICE_MODES)}, got {mode[:40]!r}")
    if mode in ("required", "function") and not names:
        raise invalid(f"tool_choice.mode {mode!r} needs tools")
    if mode == "function":
        if tc.function_name not in names:
            raise invalid(
                f"tool_choice.function_name {tc.function_name[:80]!r} is not among the tools "
                f"({', '.join(sorted(names))})"
            )
        return ToolChoice("function", tc.function_name)
    if tc.function_name:
        raise invalid(f"tool_choice.function_name goes with mode 'function', not {mode!r}")
    return ToolChoice(mode)


def message_tool_fields(i: int, msg: pb.Message) -> tuple[tuple[ToolCall, ...], str]:
    """messages[i]'s tool_calls (assistant turns only) and tool_call_id (tool turns only), checked."""
    if msg.tool_calls and msg.role != "assistant":
        raise invalid(f"messages[{i}].tool_calls: only an assistant turn makes calls (role is {msg.role!r})")
    if msg.tool_call_id and msg.role != "tool":
        raise invalid(f"messages[{i}].tool_call_id goes with role 'tool', not {msg.role!r}")
    calls = []
    for j, c in enumerate(msg.tool_calls):
        path = f"messages[{i}].tool_calls[{j}]"
        if c.type not in ("", "function"):
            raise invalid(f"{path}.type must be 'function', got {c.type[:40]!r}")
        if not NAME.fullmatch(c.name):
            raise invalid(f"{path}.name must match {NAME.pattern}, got {c.name[:80]!r}")
        if len(c.arguments.encode()) > MAX_ARGUMENTS_BYTES:
            raise invalid(f"{path}.arguments is over {MAX_ARGUMENTS_BYTES} bytes")
        try:
            args = json.loads(c.arguments or "{}")
        except ValueError as exc:
            raise invalid(f"{path}.arguments is not JSON: {exc}") from None
        if not isinstance(args, dict):
            raise invalid(f"{path}.arguments must be a JSON object, got {type(args).__name__}")
        calls.append(ToolCall(c.id or f"call_{i}_{j}", c.name, json.dumps(args, ensure_ascii=False), j))
    return tuple(calls), msg.tool_call_id


def check_schema(path: str, text: str) -> Any:
    """The schema in `text`, parsed; INVALID_ARGUMENT naming `path` unless it is a usable JSON schema."""
    if not text:
        raise invalid(f"{path} is empty: send a JSON schema")
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise invalid(f"{path} is over {MAX_SCHEMA_BYTES} bytes")
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise invalid(f"{path} is not JSON: {exc}") from None
    if not isinstance(schema, dict | bool):
        raise invalid(f"{path} must be a JSON object (a schema), got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise invalid(
            f"{path} is not a valid JSON schema{f' at {where}' if where else ''}: {exc.message}"
        ) from None
    except Exception as exc:  # e.g. an unknown $schema dialect
        raise invalid(f"{path} is not a valid JSON schema: {exc}") from None
    try:
        problem = LLMatcher.validate_grammar(LLMatcher.grammar_from_json_schema(schema))
    except (ValueError, TypeError) as exc:
        problem = str(exc)
    if problem:
        raise invalid(f"{path} cannot be decoded with: {_first_line(problem)}")
    return schema


def check_regex(path: str, pattern: str) -> None:
    if not pattern:
        raise invalid(f"{path} is empty: send a regular expression")
    if len(pattern) > MAX_REGEX_CHARS:
        raise invalid(f"{path} has {len(pattern)} chars; at most {MAX_REGEX_CHARS}")
    problem = LLMatcher.validate_grammar(LLMatcher.grammar_from_regex(pattern))
    if problem:
        raise invalid(f"{path} is not a usable regex: {_first_line(problem)}")


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines[:3])[:300]
