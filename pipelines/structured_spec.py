"""What a job asks of its output's structure (torch-free, shared by the gateway and the workers).

`ResponseFormat` (free text, any JSON object, a JSON schema or a regex), `Tool` definitions with the
`tool_choice` mode, and the `ToolCall`s a reply makes (or an earlier assistant turn made). Schemas
travel as JSON text so that a job round-trips through JSON exactly (integers stay integers).
The gateway checks all of it before a job is sent (`gateway.structured`); the worker turns it into
a grammar (`pipelines.structured`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RESPONSE_FORMATS = ("text", "json_object", "json_schema", "regex")
# tool_choice: "auto" (the model decides), "none" (no calls: tools are only shown), "required" (at
# least one call), or "function" with `ToolChoice.name` (exactly that function)
TOOL_CHOICE_MODES = ("auto", "none", "required", "function")


@dataclass(frozen=True)
class ResponseFormat:
    type: str = "text"  # one of RESPONSE_FORMATS
    schema: str = ""  # json_schema: the schema, JSON text
    name: str = ""  # json_schema: its name (reported back, not used for decoding)
    strict: bool = False  # json_schema: accepted for compatibility; outputs always follow the schema
    pattern: str = ""  # regex: the whole output matches it

    @property
    def constrains(self) -> bool:
        return self.type != "text"


@dataclass(frozen=True)
class Tool:
    """A function the model may call: `parameters` is the JSON schema of its arguments (JSON text)."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object"}'
    strict: bool = False


@dataclass(frozen=True)
class ToolChoice:
    mode: str = "auto"  # one of TOOL_CHOICE_MODES
    name: str = ""  # mode "function": the function to call


@dataclass(frozen=True)
class ToolCall:
    """One call: `arguments` is JSON text (an object), `index` its place among the reply's calls."""

    id: str
    name: str
    arguments: str
    index: int = 0


def response_format_from_dict(data: dict[str, Any] | None) -> ResponseFormat | None:
    return None if data is None else ResponseFormat(**data)


def tools_from_dicts(data: Any) -> tuple[Tool, ...]:
    return tuple(Tool(**t) for t in data or ())


def tool_calls_from_dicts(data: Any) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(**c) for c in data or ())
