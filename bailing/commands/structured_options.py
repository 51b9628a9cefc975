"""`bailing chat`'s structured-output and tool flags, and how it prints the calls a reply makes.

Flow: --json-schema FILE [--schema-name] | --json-object | --regex, --tools FILE, --tool-choice,
--no-parallel-tool-calls -> `structured_options` (the files read and parsed here, before any
connection; a problem is an `OptionError` with a one-line message) -> `Client.generate` / `stream`
keyword options; the reply's `ToolCall`s -> one line each (`tool call ID: NAME(ARGUMENTS)`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import Any

TOOL_CHOICE_MODES = ("auto", "none", "required")


class OptionError(ValueError):
    """A structured-output flag the CLI cannot use (an unreadable file, bad JSON, a missing partner)."""


def add_structured_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "structured output and tools", "hold the answer to JSON or a regex; let the model call functions"
    )
    shape = group.add_mutually_exclusive_group()
    shape.add_argument(
        "--json-schema", metavar="FILE", help="the answer is JSON following the schema in FILE"
    )
    shape.add_argument("--json-object", action="store_true", help="the answer is a JSON object")
    shape.add_argument("--regex", metavar="PATTERN", help="the whole answer matches PATTERN")
    group.add_argument("--schema-name", metavar="NAME", help="with --json-schema: the schema's name")
    group.add_argument(
        "--tools", metavar="FILE",
        help='functions the model may call: FILE holds an OpenAI-style list [{"type": "function", ...}]',
    )  # fmt: skip
    group.add_argument(
        "--tool-choice", metavar="CHOICE",
        help="with --tools: auto (default), none, required, or the name of the function to call",
    )  # fmt: skip
    group.add_argument(
        "--no-parallel-tool-calls", dest="parallel_tool_calls", action="store_const", const=False,
        default=None, help="with --tools: at most one call per answer",
    )  # fmt: skip


def structured_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `generate` keyword options the flags set (none set: {}); raises `OptionError`."""
    if args.schema_name is not None and args.json_schema is None:
        raise OptionError("--schema-name goes with --json-schema")
    if args.tools is None and (args.tool_choice is not None or args.parallel_tool_calls is not None):
        raise OptionError("--tool-choice and --no-parallel-tool-calls go with --tools")
    options: dict[str, Any] = {}
    if args.json_schema is not None:
        schema = read_json_file("--json-schema", args.json_schema)
        if not isinstance(schema, dict | bool):
            raise OptionError(f"--json-schema: {args.json_schema} holds {_kind(schema)}, not a JSON schema")
        json_schema = {"schema": schema, **({"name": args.schema_name} if args.schema_name else {})}
        options["response_format"] = {"type": "json_schema", "json_schema": json_schema}
    elif args.json_object:
        options["response_format"] = {"type": "json_object"}
    elif args.regex is not None:
        options["response_format"] = {"type": "regex", "regex": args.regex}
    if args.tools is not None:
        tools = read_json_file("--tools", args.tools)
        if not isinstance(tools, list):
            raise OptionError(f"--tools: {args.tools} holds {_kind(tools)}, not a list of tools")
        options["tools"] = tools
    if args.tool_choice is not None:
        options["tool_choice"] = tool_choice_option(args.tool_choice)
    if args.parallel_tool_calls is not None:
        options["parallel_tool_calls"] = args.parallel_tool_calls
    return options


def chat_options(args: argparse.Namespace) -> dict[str, Any]:
    """`structured_options`, the files read once per `args` (kept in `args.structured`)."""
    if args.structured is None:
        args.structured = structured_options(args)
    return args.structured


def tool_choice_option(value: str) -> str | dict[str, Any]:
    """--tool-choice as `generate` takes it: a mode, or a function name -> {"type": "function", ...}."""
    if value in TOOL_CHOICE_MODES:
        return value
    if not value:
        raise OptionError("--tool-choice: auto, none, required or a function name is required")
    return {"type": "function", "function": {"name": value}}


def read_json_file(flag: str, path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise OptionError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise OptionError(f"{flag}: {path} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OptionError(f"{flag}: {path} is not valid JSON: {exc}") from None


def _kind(value: Any) -> str:
    names = {list: "a list", dict: "an object", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def format_tool_call(call: Any) -> str:
    return f"tool call {call.id}: {call.name}({call.arguments})"


def print_tool_calls(calls: Iterable[Any]) -> None:
    for call in calls:
        print(format_tool_call(call))
