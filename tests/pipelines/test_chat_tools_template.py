"""A chat with tools, calls and tool results renders byte-identical to transformers' apply_chat_template
with the same OpenAI-shaped conversation, on the Ling and Ring demo tokenizers (their upstream templates)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from engine.tokenizer import load_tokenizer
from pipelines.protocol import ChatMessage, GenerateJob, Part, Tool, ToolCall
from pipelines.text import render_chat

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather now", "parameters": PARAMS},
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
]
OPENAI_MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Weather in Oslo and Bergen?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
            },
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Bergen"}},
            },
        ],
    },
    {"role": "tool", "content": '{"temp": 3}', "tool_call_id": "c1"},
    {"role": "tool", "content": '{"temp": 5}', "tool_call_id": "c2"},
]


def job() -> GenerateJob:
    def text(t: str) -> tuple[Part, ...]:
        return (Part("text", t),)

    calls = (
        ToolCall("c1", "get_weather", '{"city": "Oslo"}', 0),
        ToolCall("c2", "get_weather", '{"city": "Bergen"}', 1),
    )
    return GenerateJob(
        request_id="r",
        model="m",
        messages=(
            ChatMessage("system", text("You are helpful.")),
            ChatMessage("user", text("Weather in Oslo and Bergen?")),
            ChatMessage("assistant", (), calls),
            ChatMessage("tool", text('{"temp": 3}'), (), "c1"),
            ChatMessage("tool", text('{"temp": 5}'), (), "c2"),
        ),
        tools=(Tool("get_weather", "Weather now", json.dumps(PARAMS)), Tool("noop")),
    )


@pytest.mark.parametrize("fixture", ["demo_ling", "demo_ring"])
def test_tools_render_as_transformers_renders_them(fixture, request):
    tokenizer = load_tokenizer(request.getfixturevalue(fixture))
    ours = render_chat(job(), SimpleNamespace(tokenizer=tokenizer))
    theirs = tokenizer.apply_chat_template(
        OPENAI_MESSAGES, tools=OPENAI_TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert ours == theirs
    if fixture == "demo_ling":  # the Ling template shows the tools, the calls and their results
        assert (
            '"name": "get_weather"' in ours and "<tool_call>" in ours and "<role>OBSERVATION</role>" in ours
        )
