"""The client's structured output and tool calls: request fields, their checks, and parsed replies."""

from __future__ import annotations

import json
import math

import pytest

from bailing.client import (
    BailingArgumentError,
    BailingClientError,
    Choice,
    Chunk,
    Client,
    ToolCall,
    build_request,
    messages_to_pb,
)
from bailing.client_batch import BatchItemResult, build_batch_request
from bailing.client_convert import chunk_from_pb, completion_from_pb
from gateway.api import pb

ASK = [{"role": "user", "content": "Weather in Oslo?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "today's weather", "parameters": SCHEMA},
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def _refused(match: str, **kwargs) -> BailingArgumentError:
    """build_request(**kwargs) refuses: a ValueError and an INVALID_ARGUMENT client error."""
    kwargs.setdefault("messages", ASK)
    with pytest.raises(ValueError, match=match) as info:
        build_request("ling", **kwargs)
    assert isinstance(info.value, BailingClientError) and info.value.code == "INVALID_ARGUMENT"
    return info.value


# ---- response_format -------------------------------------------------------------------------
def test_no_structured_option_leaves_the_fields_unset():
    req = build_request("ling", messages=ASK)
    assert not req.HasField("response_format") and not req.tools
    assert not req.HasField("tool_choice") and not req.HasField("parallel_tool_calls")


@pytest.mark.parametrize("kind", ["text", "json_object"])
def test_plain_response_formats(kind):
    req = build_request("ling", "hi", response_format={"type": kind})
    assert req.HasField("response_format") and req.response_format.type == kind


def test_regex_response_format():
    req = build_request("ling", "hi", response_format={"type": "regex", "regex": r"(yes|no)"})
    assert (req.response_format.type, req.response_format.regex) == ("regex", "(yes|no)")


@pytest.mark.parametrize("schema", [SCHEMA, json.dumps(SCHEMA)], ids=["dict", "json-text"])
def test_json_schema_travels_as_json_text(schema):
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "city-1", "schema": schema, "strict": True, "description": "a city"},
    }
    js = build_request("ling", messages=ASK, response_format=fmt).response_format.json_schema
    assert json.loads(js.schema) == SCHEMA
    assert (js.name, js.strict, js.description) == ("city-1", True, "a city")


def test_json_schema_name_is_optional():
    fmt = {"type": "json_schema", "json_schema": {"schema": True}}
    js = build_request("ling", "hi", response_format=fmt).response_format.json_schema
    assert (js.name, js.schema, js.strict) == ("", "true", False)


def _schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


circular: dict = {"type": "object"}
circular["properties"] = {"self": circular}


@pytest.mark.parametrize(
    ("fmt", "match"),
    [
        ("json_object", r"response_format: a dict is required, got str"),
        ({"type": "yaml"}, r"response_format\.type: one of text, json_object, json_schema, regex"),
        ({}, r"response_format\.type"),
        ({"type": "json_object", "schema": SCHEMA}, r"response_format: unknown key\(s\) \['schema'\]"),
        ({"type": "regex"}, r"response_format\.regex: a non-empty pattern"),
        ({"type": "regex", "regex": ""}, r"response_format\.regex"),
        ({"type": "json_schema"}, r"response_format\.json_schema: a dict with \"schema\""),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, r"json_schema\.schema: a JSON schema"),
        (
            _schema_format({"type": "object", "default": {1, 2}}),
            r"json_schema\.schema: not JSON-serialisable",
        ),
        (_schema_format({"type": "number", "maximum": math.nan}), r"json_schema\.schema: not JSON-serial"),
        (_schema_format(circular), r"json_schema\.schema: not JSON-serialisable.*[Cc]ircular"),
        (_schema_format("{not json"), r"json_schema\.schema: not JSON text"),
        (
            _schema_format("[1, 2]"),
            r"json_schema\.schema: the JSON must be an object or true/false, got list",
        ),
        (_schema_format(["type"]), r"json_schema\.schema: a dict or JSON text .* got list"),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
            r"json_schema\.name: letters",
        ),
        ({"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}, r"strict: a bool"),
        ({"type": "json_schema", "json_schema": {"schema": {}, "schemas": {}}}, r"unknown key\(s\)"),
    ],
)
def test_bad_response_formats_are_refused(fmt, match):
    _refused(match, response_format=fmt)


# ---- tools, tool_choice, parallel_tool_calls -------------------------------------------------
def test_tools_with_every_option():
    weather_text = {"type": "function", "function": {**WEATHER["function"], "parameters": json.dumps(SCHEMA)}}
    req = build_request(
        "ling", messages=ASK, tools=[weather_text, CLOCK], tool_choice="required", parallel_tool_calls=False
    )
    weather, clock = req.tools
    assert (weather.type, weather.function.name, weather.function.description) == (
        "function", "get_weather", "today's weather",
    )  # fmt: skip
    assert json.loads(weather.function.parameters) == SCHEMA
    assert (clock.function.name, clock.function.parameters) == ("get_time", "")  # any object
    assert req.tool_choice.mode == "required" and not req.tool_choice.function_name
    assert req.HasField("parallel_tool_calls") and req.parallel_tool_calls is False


@pytest.mark.parametrize("mode", ["auto", "none", "required"])
def test_tool_choice_modes(mode):
    req = build_request("ling", messages=ASK, tools=[WEATHER], tool_choice=mode)
    assert (req.tool_choice.mode, req.tool_choice.function_name) == (mode, "")


def test_tool_choice_naming_a_function():
    choice = {"type": "function", "function": {"name": "get_time"}}
    req = build_request(
        "ling", messages=ASK, tools=[WEATHER, CLOCK], tool_choice=choice, parallel_tool_calls=True
    )
    assert (req.tool_choice.mode, req.tool_choice.function_name) == ("function", "get_time")
    assert req.parallel_tool_calls is True


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tools": WEATHER}, r"tools: a list of tools is required, got dict"),
        ({"tools": ["get_weather"]}, r"tools\[0\]: a tool is a dict, got str"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, r"tools\[0\]\.type: 'function'"),
        ({"tools": [{"type": "function"}]}, r"tools\[0\]\.function: \{"),
        (
            {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
            r"tools\[0\]\.function\.name",
        ),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, r"function\.name: letters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "params": {}}}]}, r"unknown key\(s\)"),
        (
            {"tools": [{"function": {"name": "f", "parameters": {"a": {1}}}}]},
            r"parameters: not JSON-serialis",
        ),
        (
            {"tools": [{"function": {"name": "f", "parameters": "{"}}]},
            r"tools\[0\]\.function\.parameters: not JSON",
        ),
        ({"tools": [{"function": {"name": "f", "description": 3}}]}, r"description: a str is required"),
        (
            {"tools": [WEATHER, WEATHER]},
            r"tools\[1\]\.function\.name: 'get_weather' is used by an earlier tool",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, r"tool_choice: 'auto', 'none', 'required' or"),
        ({"tools": [WEATHER], "tool_choice": "get_weather"}, r"tool_choice: 'auto', 'none', 'required'"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "f"}}, r"tool_choice: 'auto'"),
        ({"tools": [WEATHER], "tool_choice": 1}, r"tool_choice: .* got 1"),
        ({"tool_choice": "required"}, r"tool_choice: 'required' needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            r"tool_choice\.function\.name: 'get_time' is not among the tools \(get_weather\)",
        ),
        (
            {"tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            r"'get_time' is not among the tools \(there are none\)",
        ),
        ({"parallel_tool_calls": "no"}, r"parallel_tool_calls: True, False or None is required, got str"),
        ({"parallel_tool_calls": 0}, r"parallel_tool_calls: .* got int"),
        ({"messages": None, "prompt": "hi", "tools": [WEATHER]}, r"tools: tools need a chat request"),
    ],
)
def test_bad_tool_options_are_refused(kwargs, match):
    _refused(match, **kwargs)


def test_refused_before_any_network_call(dead_address):
    with Client(dead_address, timeout=5) as client:
        with pytest.raises(ValueError, match="tool_choice"):
            client.generate("ling", messages=ASK, tools=[WEATHER], tool_choice="always")
        with pytest.raises(ValueError, match="response_format"):
            client.stream("ling", messages=ASK, response_format={"type": "json_schema"})


# ---- chat turns with tool calls --------------------------------------------------------------
def test_assistant_tool_calls_and_tool_results():
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    as_dict = {"id": "call_2", "function": {"name": "get_time", "arguments": {"zone": "CET", "é": 1}}}
    msgs = messages_to_pb(
        [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call, as_dict]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 3}'},
            {"role": "assistant", "content": "", "tool_calls": [ToolCall("call_3", "get_time", "{}", 0)]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [call]},
        ]
    )
    _, first, result, third, fourth = msgs
    assert not first.content and [(c.id, c.type, c.name, c.index) for c in first.tool_calls] == [
        ("call_1", "function", "get_weather", 0),
        ("call_2", "function", "get_time", 1),
    ]
    assert first.tool_calls[0].arguments == '{"city": "Oslo"}'
    assert json.loads(first.tool_calls[1].arguments) == {"zone": "CET", "é": 1}
    assert (result.role, result.tool_call_id, result.content[0].text) == ("tool", "call_1", '{"celsius": 3}')
    assert not third.content and third.tool_calls[0].name == "get_time" and third.tool_calls[0].id == "call_3"
    assert fourth.content[0].text == "Checking." and len(fourth.tool_calls) == 1
    assert not msgs[0].tool_calls and msgs[0].tool_call_id == ""


def test_a_reply_s_tool_calls_can_be_sent_back():
    reply = completion_from_pb(
        pb.GenerateResponse(
            request_id="r",
            model="ling",
            finish_reason="tool_calls",
            tool_calls=[
                pb.ToolCall(id="c9", type="function", name="get_weather", arguments='{"city": "Rome"}')
            ],
        )
    )
    (turn,) = messages_to_pb([{"role": "assistant", "content": reply.text, "tool_calls": reply.tool_calls}])
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [
        ("c9", "get_weather", '{"city": "Rome"}')
    ]


def _call(**function) -> dict:
    return {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}", **function}}


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (
            {"role": "user", "content": "hi", "tool_calls": [_call()]},
            r"messages\[0\]\.tool_calls: only an assistant",
        ),
        (
            {"role": "user", "content": "hi", "tool_call_id": "c"},
            r"messages\[0\]\.tool_call_id: goes with role 'tool', not 'user'",
        ),
        ({"role": "tool", "content": "3", "tool_call_id": 3}, r"tool_call_id: a string is required, got int"),
        ({"role": "assistant", "content": None}, r"messages\[0\]\.content: a string or a list"),
        ({"role": "assistant", "tool_calls": _call()}, r"tool_calls: a list of calls is required, got dict"),
        ({"role": "assistant", "tool_calls": ["f()"]}, r"tool_calls\[0\]: a call is a dict or a ToolCall"),
        ({"role": "assistant", "tool_calls": [{"id": "c", "function": "f"}]}, r"tool_calls\[0\]\.function"),
        ({"role": "assistant", "tool_calls": [{**_call(), "type": "code"}]}, r"tool_calls\[0\]\.type"),
        ({"role": "assistant", "tool_calls": [_call(name="")]}, r"tool_calls\[0\]\.function\.name: letters"),
        ({"role": "assistant", "tool_calls": [_call(arguments="{oops")]}, r"arguments: not JSON text"),
        (
            {"role": "assistant", "tool_calls": [_call(arguments="[1]")]},
            r"arguments: the JSON must be an object",
        ),
        ({"role": "assistant", "tool_calls": [_call(arguments=[1])]}, r"arguments: a dict or JSON text"),
        (
            {"role": "assistant", "tool_calls": [_call(arguments={"a": {1}})]},
            r"arguments: not JSON-serialisable",
        ),
        ({"role": "assistant", "tool_calls": [{**_call(), "id": 5}]}, r"tool_calls\[0\]\.id: a str"),
        ({"role": "assistant", "tool_calls": [_call(args="{}")]}, r"unknown key\(s\) \['args'\]"),
    ],
)
def test_bad_tool_turns_are_refused(message, match):
    with pytest.raises(BailingArgumentError, match=match):
        messages_to_pb([message])


# ---- replies ---------------------------------------------------------------------------------
CALL = pb.ToolCall(id="call_0", type="function", name="get_weather", arguments='{"city": "Oslo"}', index=0)
CALL_2 = pb.ToolCall(id="call_1", type="function", name="get_time", arguments="{}", index=1)


def test_responses_carry_parsed_tool_calls():
    msg = pb.GenerateResponse(
        request_id="r", model="ling", finish_reason="tool_calls", usage=pb.Usage(completion_tokens=9),
        choices=[
            pb.Choice(index=0, finish_reason="tool_calls", completion_tokens=5, tool_calls=[CALL, CALL_2]),
            pb.Choice(index=1, text="sunny", finish_reason="stop", completion_tokens=4),
        ],
        tool_calls=[CALL, CALL_2],
    )  # fmt: skip
    out = completion_from_pb(msg)
    expected = (
        ToolCall("call_0", "get_weather", '{"city": "Oslo"}', 0),
        ToolCall("call_1", "get_time", "{}", 1),
    )
    assert out.tool_calls == expected and out.finish_reason == "tool_calls" and out.text == ""
    assert out.choices == (
        Choice(0, "", "", "tool_calls", 5, 0, expected),
        Choice(1, "sunny", "", "stop", 4, 0),
    )
    assert json.loads(out.tool_calls[0].arguments) == {"city": "Oslo"}


def test_chunks_carry_whole_tool_calls():
    calls = chunk_from_pb(pb.GenerateChunk(request_id="r", index=1, tool_calls=[CALL]))
    assert calls == Chunk(
        "r", "", "", index=1, tool_calls=(ToolCall("call_0", "get_weather", '{"city": "Oslo"}'),)
    )
    finish = chunk_from_pb(pb.GenerateChunk(request_id="r", finish_reason="tool_calls", usage=pb.Usage()))
    assert finish.tool_calls == () and finish.finish_reason == "tool_calls"


def test_batch_results_keep_tool_calls():
    response = pb.GenerateResponse(
        request_id="r", model="ling", finish_reason="tool_calls",
        choices=[pb.Choice(index=0, finish_reason="tool_calls", tool_calls=[CALL])], tool_calls=[CALL],
    )  # fmt: skip
    line = json.loads(BatchItemResult(0, "a", response=completion_from_pb(response)).to_json_line())
    call = {"id": "call_0", "type": "function", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert line["response"]["tool_calls"] == [call]
    assert line["response"]["choices"][0]["tool_calls"] == [call]


def test_batch_items_take_the_structured_options():
    request = build_batch_request(
        "ling",
        None,
        [
            (
                "a",
                {
                    "messages": ASK,
                    "tools": [WEATHER],
                    "tool_choice": "required",
                    "parallel_tool_calls": False,
                },
            ),
            ("b", {"prompt": "hi", "response_format": {"type": "regex", "regex": "[0-9]+"}}),
        ],
    )
    a, b = (item.request for item in request.items)
    assert [t.function.name for t in a.tools] == ["get_weather"] and a.tool_choice.mode == "required"
    assert a.parallel_tool_calls is False and b.response_format.regex == "[0-9]+"
    with pytest.raises(ValueError, match=r"tool_choice: 'auto'"):
        build_batch_request("ling", None, [("c", {"messages": ASK, "tools": [WEATHER], "tool_choice": "x"})])
