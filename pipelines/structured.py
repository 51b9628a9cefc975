"""A job's structure as a grammar: response_format and forced tool calls -> one Lark grammar for llguidance.

What the output may be, by the job's fields:

| tool_choice \\ response_format | text (or none)          | json_object / json_schema / regex |
|---|---|---|
| none, or no tools             | free                    | the format                        |
| auto                          | free (calls parsed)     | the format, or tool calls          |
| required                      | one or more calls       | one or more calls                  |
| function (name)               | calls of that function  | calls of that function             |

A call is written in the family's own format (`ToolCallTags`: Ling's `<tool_call>\\n{"name": ..., "arguments":
{...}}\\n</tool_call>`, calls separated by a newline), its arguments held to the tool's parameter
schema. Objects that list their properties get no others (`closed_objects`, xgrammar's strict
mode). JSON is written as the chat templates write it (`", "` and `": "`, no other whitespace), so a
constrained reply reads like the model's own. For a reasoning family whose output starts in its think
block the grammar comes into force after the block (`AnswerGate`), and may start with whitespace (the
blank line the template puts after the closing tag).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from engine.errors import RequestError
from models.family import Family
from pipelines.output import ReasoningMode
from pipelines.protocol import GenerateJob
from pipelines.reasoning import ReasoningTracker
from pipelines.structured_spec import Tool

# llguidance's JSON options: the separators Ling's chat template uses (Python's json.dumps defaults)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}
# keywords that let an object have more than its `properties` (left as the schema says)
OPEN_KEYS = frozenset(
    {"additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf", "oneOf", "$ref"}
)
LITERAL_KEYS = frozenset({"const", "enum", "default", "examples"})  # values, not subschemas


def wants_grammar(job: GenerateJob) -> bool:
    choice = job.tool_choice.mode
    forced_call = bool(job.tools) and choice in ("required", "function")
    return forced_call or (job.response_format is not None and job.response_format.constrains)


def parses_tool_calls(job: GenerateJob) -> bool:
    """Whether the reply is read for tool calls (tools given and not switched off)."""
    return bool(job.tools) and job.tool_choice.mode != "none"


def job_grammar(job: GenerateJob, family: Family, leading_space: bool = False) -> str | None:
    """The Lark grammar (llguidance dialect) of the job's output, or None when it is free."""
    if not wants_grammar(job):
        return None
    rules: list[str] = []
    if job.tools and job.tool_choice.mode in ("required", "function"):
        start = _calls(job, family, rules)
    else:
        start = "answer"
        rules.append(f"answer: {_format_rule(job)}")
        if parses_tool_calls(job):  # auto: the format, or calls
            start = f"({start} | {_calls(job, family, rules)})"
    lines = [f"start: {'ws? ' if leading_space else ''}{start}", *rules]
    if leading_space:
        lines.append(r"ws: /[ \t\r\n]+/")
    return "\n".join(lines) + "\n"


def _format_rule(job: GenerateJob) -> str:
    fmt = job.response_format
    assert fmt is not None
    if fmt.type == "regex":
        return "/" + fmt.pattern.replace("/", "\\/") + "/"
    schema = ANY_OBJECT if fmt.type == "json_object" else json.loads(fmt.schema)
    return _json_rule(schema)


def closed_objects(schema: Any) -> Any:
    """The schema with every object that lists its `properties` and says nothing of others closed to
    them (`additionalProperties: false`), as xgrammar's strict mode (vLLM's and SGLang's default) reads
    schemas: an answer then has the fields the schema names, not invented ones (it still validates
    against the schema as given). Objects combined with allOf / anyOf / oneOf / $ref or with
    patternProperties / unevaluatedProperties keep the schema's own rules."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in LITERAL_KEYS else closed_objects(v) for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict) and not OPEN_KEYS & schema.keys():
        out["additionalProperties"] = False
    return out


def _json_rule(schema: Any) -> str:
    schema = closed_objects(schema)
    if isinstance(schema, dict):
        schema = {**schema, "x-guidance": {**schema.get("x-guidance", {}), **JSON_STYLE}}
    elif schema is True:  # JSON schema's "anything"
        schema = {"x-guidance": JSON_STYLE}
    return "%json " + json.dumps(schema, ensure_ascii=False)


def _calls(job: GenerateJob, family: Family, rules: list[str]) -> str:
    """Add the call rules; returns the rule name of the reply's calls."""
    tags = family.tool_calls
    if tags is None:
        raise RequestError(f"model '{job.model}' does not take tools")
    tools = _callable(job.tools, job.tool_choice.name if job.tool_choice.mode == "function" else "")
    names = []
    for i, tool in enumerate(tools):
        names.append(f"fn{i}")
        call = {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": json.loads(tool.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        rules.append(f"fn{i}: {_json_rule(call)}")
    pieces = [tags.open, tags.before, f"({' | '.join(names)})", tags.after, tags.close]
    rules.append("call: " + " ".join(p if p.startswith("(") else _quote(p) for p in pieces if p))
    between = f"{_quote(tags.between)} " if tags.between else ""
    rules.append(f"calls: call ({between}call)*" if job.parallel_tool_calls else "calls: call")
    return "calls"


def _callable(tools: Sequence[Tool], name: str) -> Sequence[Tool]:
    if not name:
        return tools
    chosen = [t for t in tools if t.name == name]
    if not chosen:  # the gateway checks this; a job from elsewhere may not have been
        raise RequestError(f"tool_choice names function {name!r}, which is not among the tools")
    return chosen


def _quote(piece: str) -> str:
    """A literal of the grammar: special tokens (`<tool_call>`) as themselves, text quoted."""
    if piece.startswith("<") and piece.endswith(">") and " " not in piece:
        return piece
    return f'"{_escape(piece)}"'


def _escape(text: str) -> str:
    return json.dumps(text)[1:-1]


class AnswerGate:
    """A grammar gate for a reasoning model: opens once the think block closes; the answer text the
    output already holds past the closing tag is what the grammar must take first."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], mode: ReasoningMode) -> None:
        self.tokenizer, self.prompt_ids, self.mode = tokenizer, list(prompt_ids), mode
        self.tracker = ReasoningTracker(tokenizer, self.prompt_ids, mode.tags, mode.starts_in_reasoning)
        self._answer = ""

    def clone(self) -> AnswerGate:
        return AnswerGate(self.tokenizer, self.prompt_ids, self.mode)

    def __call__(self, output_token_ids: Sequence[int]) -> str | None:
        self._answer += self.tracker.update(output_token_ids).text
        return self._answer if self.tracker.closed else None
