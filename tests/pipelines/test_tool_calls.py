"""ToolCallParser: calls out of streamed answer text, whatever the chunking; nothing the model wrote lost."""

from __future__ import annotations

import json

import pytest

from models.family import ToolCallTags
from pipelines.tool_calls import ToolCallParser

TWO_CALLS = (
    '\n\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
    '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>'
)


def run(text: str, step: int) -> tuple[str, list]:
    parser, content, calls = ToolCallParser(ToolCallTags()), "", []
    for i in range(0, len(text), step):
        out = parser.feed(text[i : i + step])
        content, calls = content + out.content, calls + out.calls
    out = parser.finish()
    return content + out.content, calls + out.calls


@pytest.mark.parametrize("step", [1, 2, 3, 5, 11, 1000])
def test_calls_whatever_the_chunking(step):
    content, calls = run(TWO_CALLS, step)
    assert content == ""  # the whitespace around calls is layout
    assert [(c.name, json.loads(c.arguments), c.index) for c in calls] == [("f", {"a": 1}, 0), ("g", {}, 1)]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_text_before_a_call_is_content(step):
    content, calls = run('Let me look.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', step)
    assert content == "Let me look.\n" and [c.name for c in calls] == ["f"]


@pytest.mark.parametrize(
    "text",
    [
        "plain answer, no calls",
        "  leading space kept without calls\n",
        "a <tool_call>not json</tool_call> b",  # a block that is no call stays text
        '<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>',  # name not a string
        '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>',  # arguments not an object
        'unclosed <tool_call>\n{"name": "f"',  # cut off by max_tokens
        "ends with a partial tag <tool",
    ],
)
def test_everything_that_is_not_a_call_is_content(text):
    for step in (1, 3, 1000):
        assert run(text, step) == (text, [])


def test_arguments_written_as_a_json_string_are_accepted():
    content, calls = run('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 2}"}\n</tool_call>', 1000)
    assert content == "" and json.loads(calls[0].arguments) == {"x": 2}
