"""`bailing chat`'s structured-output and tool flags: what they send, how replies with tool calls print,
and the one-line errors of unreadable or invalid files (a stand-in client; no server)."""

from __future__ import annotations

import argparse
import json

import pytest

from bailing.cli import build_parser, main
from bailing.client import Choice, Chunk, Completion, Timing, ToolCall, Usage
from bailing.commands import client as commands
from bailing.commands.structured_options import format_tool_call, tool_choice_option

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
CALLS = (
    ToolCall("call_0", "get_weather", '{"city": "Oslo"}', 0),
    ToolCall("call_1", "get_weather", '{"city": "Rome"}', 1),
)


class _Stream(list):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class ToolClient:
    """Answers with tool calls (after `text`, if any) and records the options it was called with."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.calls = []

    def generate(self, model, messages=None, **options):
        self.calls.append(options)
        choice = Choice(0, self.text, "", "tool_calls", 7, 0, CALLS)
        return Completion(
            "r1", model, self.text, "", "tool_calls", Usage(3, 7, 0, 0), Timing(), (choice,), None, CALLS
        )

    def stream(self, model, messages=None, **options):
        self.calls.append(options)
        return _Stream(
            [
                *([Chunk("r1", self.text, "")] if self.text else []),
                Chunk("r1", "", "", tool_calls=CALLS[:1]),
                Chunk("r1", "", "", tool_calls=CALLS[1:]),
                Chunk("r1", "", "", "tool_calls", Usage(3, 7, 0, 0)),
            ]
        )


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["chat", "--model", "ling", *argv, "hi"])


def _write(path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _sent(*argv: str) -> dict:
    client = ToolClient()
    commands._cmd_chat(client, _args(*argv))
    return client.calls[0]


# ---- what the flags send ---------------------------------------------------------------------
def test_no_flags_send_no_structured_options():
    options = _sent()
    for name in ("response_format", "tools", "tool_choice", "parallel_tool_calls"):
        assert name not in options


def test_json_schema_file(tmp_path):
    schema = _write(tmp_path / "schema.json", SCHEMA)
    assert _sent("--json-schema", schema)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"schema": SCHEMA},
    }
    named = _sent("--json-schema", schema, "--schema-name", "city")["response_format"]
    assert named["json_schema"] == {"schema": SCHEMA, "name": "city"}


def test_json_object_and_regex():
    assert _sent("--json-object")["response_format"] == {"type": "json_object"}
    assert _sent("--regex", "(yes|no)")["response_format"] == {"type": "regex", "regex": "(yes|no)"}


def test_the_answer_formats_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _args("--json-object", "--regex", "x")
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "sent"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("get_weather", {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice_mapping(tmp_path, flag, sent):
    assert tool_choice_option(flag) == sent
    options = _sent("--tools", _write(tmp_path / "tools.json", TOOLS), "--tool-choice", flag)
    assert options["tools"] == TOOLS and options["tool_choice"] == sent
    assert "parallel_tool_calls" not in options


def test_no_parallel_tool_calls(tmp_path):
    options = _sent("--tools", _write(tmp_path / "tools.json", TOOLS), "--no-parallel-tool-calls")
    assert options["parallel_tool_calls"] is False and "tool_choice" not in options


def test_the_sent_options_build_a_request(tmp_path):
    from bailing.client import build_request

    tools = _write(tmp_path / "tools.json", TOOLS)
    options = _sent(
        "--tools", tools, "--tool-choice", "get_weather", "--json-schema", _write(tmp_path / "s", SCHEMA)
    )
    req = build_request("ling", messages=[{"role": "user", "content": "hi"}], **options)
    assert req.tool_choice.function_name == "get_weather" and json.loads(
        req.response_format.json_schema.schema
    )


# ---- one-line errors before any connection ---------------------------------------------------
@pytest.mark.parametrize(
    ("files", "argv", "message"),
    [
        (
            {},
            ["--json-schema", "{dir}/missing.json"],
            "error: --json-schema: cannot read {dir}/missing.json: ",
        ),
        (
            {"s.json": "{oops"},
            ["--json-schema", "{dir}/s.json"],
            "error: --json-schema: {dir}/s.json is not valid JSON",
        ),
        ({"s.json": "[1]"}, ["--json-schema", "{dir}/s.json"], "holds a list, not a JSON schema"),
        ({"t.json": ""}, ["--tools", "{dir}/t.json"], "error: --tools: {dir}/t.json is not valid JSON"),
        (
            {"t.json": '{"type": "function"}'},
            ["--tools", "{dir}/t.json"],
            "holds an object, not a list of tools",
        ),
        ({}, ["--tools", "{dir}"], "error: --tools: cannot read {dir}: "),
        ({}, ["--schema-name", "x", "--json-object"], "error: --schema-name goes with --json-schema"),
        (
            {},
            ["--tool-choice", "required"],
            "error: --tool-choice and --no-parallel-tool-calls go with --tools",
        ),
        ({}, ["--no-parallel-tool-calls"], "go with --tools"),
        (
            {"t.json": "[]"},
            ["--tools", "{dir}/t.json", "--tool-choice", ""],
            "error: --tool-choice: auto, none",
        ),
    ],
)
def test_bad_flags_are_one_line_usage_errors(tmp_path, capsys, files, argv, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    argv = [a.format(dir=tmp_path) for a in argv]
    args = build_parser().parse_args(["chat", "--model", "ling", "--address", "127.0.0.1:1", *argv, "hi"])
    assert args.func(args) == 2  # refused before connecting (nothing listens on port 1)
    err = capsys.readouterr().err
    assert message.format(dir=tmp_path) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_file_through_the_entry_point(tmp_path, capsys):
    bad = _write(tmp_path / "tools.json", "[{")
    assert main(["chat", "--model", "ling", "--address", "127.0.0.1:1", "--tools", bad, "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tools: ") and err.count("\n") == 1


# ---- printing tool calls ---------------------------------------------------------------------
def test_format_tool_call():
    assert format_tool_call(CALLS[0]) == 'tool call call_0: get_weather({"city": "Oslo"})'


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("text", ["", "Let me check."])
def test_tool_calls_print_after_any_text(tmp_path, capsys, stream, text):
    tools = _write(tmp_path / "tools.json", TOOLS)
    args = _args("--tools", tools, *(["--stream"] if stream else []))
    assert commands._cmd_chat(ToolClient(text), args) == 0
    out = capsys.readouterr()
    lines = [
        'tool call call_0: get_weather({"city": "Oslo"})',
        'tool call call_1: get_weather({"city": "Rome"})',
    ]
    assert out.out.splitlines() == ([text] if text else []) + lines
    assert "[r1: 7 tokens, tool_calls]" in out.err


def test_json_output_has_the_tool_calls(tmp_path, capsys):
    assert commands._cmd_chat(ToolClient(), _args("--json")) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["finish_reason"] == "tool_calls"
    assert record["tool_calls"][1] == {
        "id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Rome"}',
        "index": 1,
    }
    assert record["choices"][0]["tool_calls"] == record["tool_calls"]
