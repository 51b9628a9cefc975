"""Hypothesis strategies of GenerateRequest's structured-output fields: response_format (valid and broken
JSON schemas, hostile regexes), tools (names, parameter schemas, duplicates, huge lists), tool_choice,
and the tool turns of a conversation (calls with broken arguments, stray tool_call_ids)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from gateway.api import pb
from tests.fuzz.fields import huge_text, mostly, optional, texts

SCHEMAS = (
    {"type": "object"},
    {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["a"],
    },
    {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
    {"type": "string", "pattern": "^[a-z]{1,3}$"},
    {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    True,
)
BROKEN_SCHEMAS = (
    "",
    "{",
    "[]",
    "7",
    '{"type": 7}',
    '{"type": "strin"}',
    '{"$ref": "#/nowhere"}',
    '{"minimum": "x"}',
    '{"$schema": "http://example.com/unknown"}',
    '{"properties": {"a": {"pattern": "("}}}',
    json.dumps({"allOf": [{"type": "string"}, {"type": "integer"}]}),  # valid, but nothing matches
)
REGEXES = ("[a-z]{2,5}", r"\d{3}-\d{4}", "(yes|no)", "a/b", ".*")
BAD_REGEXES = ("", "a(b", "[z-a]", "(?<=a)b", "a{99999}", "(a|aa){1000}{1000}", "\\", "x" * 5000)
NAMES = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True), st.sampled_from(("f", "get_weather"))
)
BAD_NAMES = st.one_of(st.sampled_from(("", "a b", "ü", "x" * 65)), st.text(max_size=10))


def schema_texts() -> st.SearchStrategy[str]:
    valid = st.sampled_from(SCHEMAS).map(json.dumps)
    return mostly(
        valid, st.one_of(st.sampled_from(BROKEN_SCHEMAS), huge_text(60_000, 80_000), texts()), odds=3
    )


@st.composite
def response_formats(draw) -> pb.ResponseFormat:
    kind = draw(
        mostly(st.sampled_from(("text", "json_object", "json_schema", "regex", "")), texts(), odds=10)
    )
    fmt = pb.ResponseFormat(type=kind)
    if kind == "json_schema" or draw(st.booleans()):
        name = draw(mostly(NAMES, BAD_NAMES))
        fmt.json_schema.CopyFrom(
            pb.JsonSchema(name=name, schema=draw(schema_texts()), strict=draw(st.booleans()))
        )
    if kind == "regex" or draw(st.booleans()):
        fmt.regex = draw(
            mostly(st.sampled_from(REGEXES), st.one_of(st.sampled_from(BAD_REGEXES), texts()), odds=3)
        )
    return fmt


@st.composite
def tool_lists(draw) -> list[pb.Tool]:
    count = draw(mostly(st.integers(1, 3), st.sampled_from((0, 129, 400)), odds=12))
    kind = draw(mostly(st.sampled_from(("function", "")), texts()))
    if count > 3:
        return [pb.Tool(type="function", function=pb.FunctionDefinition(name=f"f{i}")) for i in range(count)]
    tools = []
    for _ in range(count):
        params = draw(st.one_of(st.just(""), schema_texts()))
        function = pb.FunctionDefinition(
            name=draw(mostly(NAMES, BAD_NAMES)), description=draw(texts()), parameters=params
        )
        tools.append(pb.Tool(type=kind, function=function))
    return tools


@st.composite
def tool_choices(draw) -> pb.ToolChoice:
    mode = draw(mostly(st.sampled_from(("auto", "none", "required", "function", "")), texts()))
    return pb.ToolChoice(mode=mode, function_name=draw(st.one_of(st.just(""), NAMES, BAD_NAMES)))


@st.composite
def tool_turns(draw) -> list[pb.Message]:
    """An assistant turn with calls and the tool turns answering them (sometimes broken)."""
    args = mostly(
        st.sampled_from(('{"a": 1}', "{}", "")), st.one_of(st.sampled_from(("[1]", "{", "null")), texts())
    )
    calls = [
        pb.ToolCall(id=draw(st.text(max_size=8)), name=draw(mostly(NAMES, BAD_NAMES)), arguments=draw(args))
        for _ in range(draw(st.integers(0, 2)))
    ]
    role = draw(mostly(st.just("assistant"), st.sampled_from(("user", "tool"))))
    answer = pb.Message(
        role=draw(mostly(st.just("tool"), st.just("user"))),
        content=[pb.ContentPart(text=draw(texts()))],
        tool_call_id=draw(st.text(max_size=8)),
    )
    return [pb.Message(role=role, tool_calls=calls), answer]


@st.composite
def structured_fields(draw) -> dict:
    """The structured-output fields of one GenerateRequest (most often none of them)."""
    if draw(st.integers(0, 3)) > 0:
        return {}
    fields = {
        "response_format": draw(optional(response_formats())),
        "tools": draw(st.one_of(st.just([]), tool_lists())),
        "tool_choice": draw(optional(tool_choices())),
        "parallel_tool_calls": draw(optional(st.booleans())),
    }
    return {k: v for k, v in fields.items() if v is not None}
