"""response_format / tools / tool_choice / tool turns: converted into the job, and every bad value refused
with INVALID_ARGUMENT naming its field, before anything reaches a worker; tool calls back out as chunks."""

from __future__ import annotations

import json

import grpc
import pytest

from gateway.api import pb
from gateway.config import GatewayConfig
from gateway.convert import request_to_job
from gateway.errors import Rejection
from gateway.replies import ResponseBuilder, event_to_chunks
from gateway.state import RequestTrace
from pipelines.protocol import Event, EventType, ResponseFormat, Tool, ToolCall, ToolChoice, Usage

CFG = GatewayConfig(redis_url="redis://unused", models=("ling",))
PARAMS = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}})


def chat(**kw) -> pb.GenerateRequest:
    kw.setdefault("messages", [pb.Message(role="user", content=[pb.ContentPart(text="hi")])])
    return pb.GenerateRequest(model="ling", **kw)


def tool(name: str = "get_weather", parameters: str = PARAMS) -> pb.Tool:
    return pb.Tool(type="function", function=pb.FunctionDefinition(name=name, parameters=parameters))


def job(req: pb.GenerateRequest):
    return request_to_job(req, CFG, None, submitted_at=0.0)[0]


def refused(req: pb.GenerateRequest, field: str) -> str:
    with pytest.raises(Rejection) as caught:
        job(req)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.message, caught.value.message
    return caught.value.message


def test_formats_and_tools_reach_the_job():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
    j = job(
        chat(
            response_format=pb.ResponseFormat(
                type="json_schema",
                json_schema=pb.JsonSchema(name="out", schema=json.dumps(schema), strict=True),
            ),
            tools=[tool(), tool("noop", "")],
            tool_choice=pb.ToolChoice(mode="function", function_name="noop"),
            parallel_tool_calls=False,
        )
    )
    assert j.response_format == ResponseFormat("json_schema", json.dumps(schema), "out", True)
    assert json.loads(j.response_format.schema)["properties"]["n"]["maximum"] == 3  # an int, still
    assert j.tools == (Tool("get_weather", "", PARAMS), Tool("noop", "", '{"type": "object"}'))
    assert j.tool_choice == ToolChoice("function", "noop") and j.parallel_tool_calls is False
    plain = job(chat())
    assert plain.response_format is None and plain.tools == () and plain.tool_choice == ToolChoice("auto")
    assert job(chat(response_format=pb.ResponseFormat(type="regex", regex="[a-z]+"))).response_format.pattern


def test_tool_turns_reach_the_job():
    msgs = [
        pb.Message(role="user", content=[pb.ContentPart(text="weather?")]),
        pb.Message(
            role="assistant",
            tool_calls=[pb.ToolCall(id="c1", name="get_weather", arguments='{"city":"Oslo"}')],
        ),
        pb.Message(role="tool", content=[pb.ContentPart(text="3C")], tool_call_id="c1"),
    ]
    j = job(chat(messages=msgs, tools=[tool()]))
    assert j.messages[1].tool_calls == (ToolCall("c1", "get_weather", '{"city": "Oslo"}', 0),)
    assert j.messages[2].tool_call_id == "c1"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"response_format": pb.ResponseFormat(type="yaml")}, "response_format.type"),
        ({"response_format": pb.ResponseFormat(type="json_schema")}, "response_format.json_schema.schema"),
        (
            {
                "response_format": pb.ResponseFormat(
                    type="json_schema", json_schema=pb.JsonSchema(schema="{not json")
                )
            },
            "response_format.json_schema.schema is not JSON",
        ),
        (
            {
                "response_format": pb.ResponseFormat(
                    type="json_schema", json_schema=pb.JsonSchema(schema="[1]")
                )
            },
            "response_format.json_schema.schema must be a JSON object",
        ),
        (
            {
                "response_format": pb.ResponseFormat(
                    type="json_schema", json_schema=pb.JsonSchema(schema='{"type": "strin"}')
                )
            },
            "response_format.json_schema.schema is not a valid JSON schema",
        ),
        (
            {
                "response_format": pb.ResponseFormat(
                    type="json_schema", json_schema=pb.JsonSchema(schema='{"$ref": "#/nowhere"}')
                )
            },
            "response_format.json_schema.schema cannot be decoded",
        ),
        (
            {
                "response_format": pb.ResponseFormat(
                    type="json_schema", json_schema=pb.JsonSchema(name="bad name", schema="{}")
                )
            },
            "response_format.json_schema.name",
        ),
        (
            {
                "response_format": pb.ResponseFormat(
                    type="json_schema", json_schema=pb.JsonSchema(schema=json.dumps({"x": "y" * 70000}))
                )
            },
            "over 65536 bytes",
        ),
        ({"response_format": pb.ResponseFormat(type="regex")}, "response_format.regex is empty"),
        (
            {"response_format": pb.ResponseFormat(type="regex", regex="a(b")},
            "response_format.regex is not a usable",
        ),
        ({"tools": [tool("bad name")]}, "tools[0].function.name"),
        ({"tools": [tool(), tool()]}, "tools[1].function.name 'get_weather' is used by an earlier tool"),
        ({"tools": [tool(parameters="nope")]}, "tools[0].function.parameters is not JSON"),
        (
            {"tools": [tool(parameters='{"type": "array"}')]},
            "tools[0].function.parameters must be the schema of an object",
        ),
        ({"tools": [pb.Tool(type="retrieval", function=pb.FunctionDefinition(name="f"))]}, "tools[0].type"),
        ({"tools": [tool()] * 129}, "at most 128"),
        ({"tool_choice": pb.ToolChoice(mode="required")}, "tool_choice.mode 'required' needs tools"),
        (
            {"tools": [tool()], "tool_choice": pb.ToolChoice(mode="sometimes")},
            "tool_choice.mode must be one of",
        ),
        (
            {"tools": [tool()], "tool_choice": pb.ToolChoice(mode="function", function_name="f")},
            "tool_choice.function_name",
        ),
        (
            {"tools": [tool()], "tool_choice": pb.ToolChoice(mode="auto", function_name="f")},
            "tool_choice.function_name",
        ),
        (
            {"messages": [pb.Message(role="user", tool_calls=[pb.ToolCall(name="f", arguments="{}")])]},
            "messages[0].tool_calls: only an assistant turn",
        ),
        (
            {"messages": [pb.Message(role="assistant", tool_calls=[pb.ToolCall(name="f", arguments="[]")])]},
            "messages[0].tool_calls[0].arguments must be a JSON object",
        ),
        (
            {"messages": [pb.Message(role="assistant", tool_calls=[pb.ToolCall(name="f", arguments="{")])]},
            "messages[0].tool_calls[0].arguments is not JSON",
        ),
        (
            {"messages": [pb.Message(role="user", content=[pb.ContentPart(text="x")], tool_call_id="c")]},
            "messages[0].tool_call_id goes with role 'tool'",
        ),
        ({"messages": [pb.Message(role="assistant")]}, "messages[0].content is empty"),
    ],
)
def test_bad_fields_are_named(kw, field):
    refused(chat(**kw), field)


def test_tools_need_a_chat():
    refused(pb.GenerateRequest(model="ling", prompt="x", tools=[tool()]), "tools need a chat request")


def test_tool_calls_come_back_in_chunks_and_the_response():
    calls = (ToolCall("c1", "get_weather", '{"city": "Oslo"}', 0),)
    delta = Event(seq=1, type=EventType.DELTA, tool_calls=calls)
    done = Event(seq=2, type=EventType.DONE, finish_reason="tool_calls", usage=Usage(3, 9))
    chunks = event_to_chunks("r", delta) + event_to_chunks("r", done)
    assert [(c.id, c.name, c.arguments, c.type) for c in chunks[0].tool_calls] == [
        ("c1", "get_weather", '{"city": "Oslo"}', "function")
    ]
    assert chunks[-1].finish_reason == "tool_calls"
    builder = ResponseBuilder("r", "ling")
    builder.add(delta)
    builder.add(done)
    response = builder.build(RequestTrace("r", "ling", "Generate"))
    assert response.finish_reason == "tool_calls" and response.tool_calls[0].name == "get_weather"
    assert response.choices[0].tool_calls[0].id == "c1"
