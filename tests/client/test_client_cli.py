"""How `bailing chat` / `models` print results and map errors to exit codes (a stand-in client object;
the real client and server are exercised in test_client_service.py)."""

from __future__ import annotations

import argparse
import sys

import pytest

from bailing.cli import build_parser
from bailing.client import (
    BailingClientError,
    BailingConnectionError,
    Chunk,
    Completion,
    ModelInfo,
    Timing,
    Usage,
)
from bailing.commands import client as commands

DIM, RESET = "\x1b[2m", "\x1b[0m"


class _Stream(list):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class ScriptedClient:
    """Answers with fixed results and records the options it was called with."""

    def __init__(self) -> None:
        self.calls = []

    def generate(self, model, messages=None, **options):
        self.calls.append((model, messages, options))
        usage = Usage(3, 2, 1, 0)
        return Completion("r1", model, "answer", "thinking", "stop", usage, Timing())

    def stream(self, model, messages=None, **options):
        self.calls.append((model, messages, options))
        return _Stream(
            [
                Chunk("r1", "", "think"),
                Chunk("r1", "", "ing"),
                Chunk("r1", "ans", ""),
                Chunk("r1", "wer", "", "stop", Usage(3, 2, 1, 0)),
            ]
        )

    def list_models(self):
        return [
            ModelInfo("ling", "ling", 2, 4096, ("text",)),
            ModelInfo("ming-omni", "ming", 0, 8192, ("text", "image")),
        ]


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("tty", [True, False])
@pytest.mark.parametrize("stream", [True, False])
def test_chat_prints_reasoning_dimmed_only_on_a_tty(capsys, monkeypatch, tty, stream):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    argv = ["chat", "--model", "ling", *(["--stream"] if stream else []), "hello"]
    assert commands._cmd_chat(ScriptedClient(), _args(*argv)) == 0
    out = capsys.readouterr()
    if tty:
        assert out.out.replace(DIM, "").replace(RESET, "") == "thinking\nanswer\n"
        assert out.out.index(DIM) < out.out.index("answer")
    else:
        assert out.out == "answer\n"
    assert "[r1: 2 tokens, stop]" in out.err


def test_chat_sends_options_system_and_media(tmp_path, capsys):
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    client = ScriptedClient()
    args = _args(
        "chat", "--model", "ling", "--system", "be brief", "--max-tokens", "5", "--temperature", "0.5",
        "--no-thinking", "--thinking-budget", "9", "--image", str(image), "what is this?",
    )  # fmt: skip
    commands._cmd_chat(client, args)
    model, messages, options = client.calls[0]
    assert model == "ling"
    assert messages[0] == {"role": "system", "content": "be brief"}
    assert messages[1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "path": str(image)},
    ]
    assert options["max_tokens"] == 5 and options["temperature"] == 0.5
    assert options["enable_thinking"] is False and options["thinking_budget"] == 9
    assert options["top_p"] is None  # unset options stay unset


def test_models_table(capsys):
    assert commands._cmd_models(ScriptedClient(), _args("models")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "FAMILY", "LIVE", "WORKERS", "MAX", "MODEL", "LEN", "MODALITIES"]
    assert lines[1].split() == ["ling", "ling", "2", "4096", "text"]
    assert lines[2].split() == ["ming-omni", "ming", "0", "8192", "text,image"]
    assert lines[0].index("FAMILY") == lines[2].index(" ming ") + 1  # columns line up


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BailingConnectionError("UNAVAILABLE", "cannot connect"), 3),
        (BailingClientError("UNAVAILABLE", "no live worker"), 1),
        (BailingClientError("INVALID_ARGUMENT", "temperature"), 2),
        (BailingClientError("INTERNAL", "boom"), 1),
    ],
)
def test_exit_codes(error, code):
    assert commands._exit_code(error) == code


def test_worker_healthcheck_needs_a_redis_url(monkeypatch, capsys):
    monkeypatch.delenv("BAILING_REDIS_URL", raising=False)
    assert commands._healthcheck(_args("healthcheck", "--worker", "ling")) == 2
    assert "BAILING_REDIS_URL" in capsys.readouterr().err
