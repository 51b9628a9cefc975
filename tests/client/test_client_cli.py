"""How `bailing chat` / `models` print results and map errors to exit codes (a stand-in client object;
the real client and server are exercised in test_client_service.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import pytest

from bailing.cli import build_parser
from bailing.client import (
    BailingClientError,
    BailingConnectionError,
    Choice,
    Chunk,
    Completion,
    ModelInfo,
    Timing,
    Usage,
)
from bailing.commands import client as commands
from bailing.commands import health

DIM, RESET = "\x1b[2m", "\x1b[0m"


class _Stream(list):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class ScriptedClient:
    """Answers with fixed results and records the options it was called with."""

    def __init__(self, answer: tuple[str, ...] = ("ans", "wer")) -> None:
        self.calls = []
        self.answer = answer  # as the streamed text chunks

    def generate(self, model, messages=None, **options):
        self.calls.append((model, messages, options))
        n = options.get("n") or 1
        if n == 1:
            choices = (Choice(0, "".join(self.answer), "thinking", "stop", 2, 1),)
        else:  # choice 1 did not reason and ran out of tokens
            reasons = {1: ("", "length")}
            choices = tuple(
                Choice(i, f"answer {i}", *reasons.get(i, (f"thinking {i}", "stop")), 2, 1) for i in range(n)
            )
        c0, usage = choices[0], Usage(3, 2 * n, n, 0)
        return Completion("r1", model, c0.text, c0.reasoning_text, c0.finish_reason, usage, Timing(), choices)

    def stream(self, model, messages=None, **options):
        self.calls.append((model, messages, options))
        *head, tail = self.answer
        return _Stream(
            [
                Chunk("r1", "", "think"),
                Chunk("r1", "", "ing"),
                *(Chunk("r1", text, "") for text in head),
                Chunk("r1", tail, "", "stop", Usage(3, 2, 1, 0)),
            ]
        )

    def list_models(self):
        return [
            ModelInfo("ling", "ling", 2, 4096, ("text",), ("text",)),
            ModelInfo("ming-omni", "ming", 0, 8192, ("text", "image"), ("text", "image")),
        ]


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("tty", [True, False])
@pytest.mark.parametrize("stream", [True, False])
def test_chat_prints_reasoning_dimmed_on_a_tty_and_labelled_elsewhere(capsys, monkeypatch, tty, stream):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    argv = ["chat", "--model", "ling", *(["--stream"] if stream else []), "hello"]
    assert commands._cmd_chat(ScriptedClient(), _args(*argv)) == 0
    out = capsys.readouterr()
    if tty:
        assert out.out.replace(DIM, "").replace(RESET, "") == "thinking\nanswer\n"
        assert out.out.index(DIM) < out.out.index("answer")
    else:  # piped or in a log: no dimming to tell them apart, so plain labels
        assert out.out == "[reasoning]\nthinking\n[answer]\nanswer\n"
    assert "[r1: 2 tokens, stop]" in out.err


@pytest.mark.parametrize("tty", [True, False])
@pytest.mark.parametrize("stream", [True, False])
def test_hide_reasoning_prints_only_the_answer(capsys, monkeypatch, tty, stream):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    argv = ["chat", "--model", "ring", "--hide-reasoning", *(["--stream"] if stream else []), "hello"]
    assert commands._cmd_chat(ScriptedClient(), _args(*argv)) == 0
    assert capsys.readouterr().out == "answer\n"


@pytest.mark.parametrize("tty", [True, False])
@pytest.mark.parametrize("stream", [True, False])
def test_chat_trims_the_blank_lines_after_reasoning(capsys, monkeypatch, tty, stream):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    client = ScriptedClient(answer=("\n", "\n\nHel", "\nlo"))
    argv = ["chat", "--model", "ring", *(["--stream"] if stream else []), "hello"]
    assert commands._cmd_chat(client, _args(*argv)) == 0
    out = capsys.readouterr().out.replace(DIM, "").replace(RESET, "")
    # the answer starts right below the reasoning (on a tty) or its label (off one)
    assert out == ("thinking\nHel\nlo\n" if tty else "[reasoning]\nthinking\n[answer]\nHel\nlo\n")


@pytest.mark.parametrize("tty", [True, False])
def test_chat_prints_each_of_n_choices_under_a_header(capsys, monkeypatch, tty):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    client = ScriptedClient()
    assert commands._cmd_chat(client, _args("chat", "--model", "ring", "-n", "3", "hello")) == 0
    assert client.calls[0][2]["n"] == 3
    out = capsys.readouterr()
    lines = out.out.replace(DIM, "").replace(RESET, "").splitlines()
    if tty:
        assert lines == [
            "--- choice 0 (finish: stop) ---", "thinking 0", "answer 0",
            "--- choice 1 (finish: length) ---", "answer 1",
            "--- choice 2 (finish: stop) ---", "thinking 2", "answer 2",
        ]  # fmt: skip
        assert out.out.count(DIM) == 2
    else:
        assert lines == [
            "--- choice 0 (finish: stop) ---", "[reasoning]", "thinking 0", "[answer]", "answer 0",
            "--- choice 1 (finish: length) ---", "answer 1",
            "--- choice 2 (finish: stop) ---", "[reasoning]", "thinking 2", "[answer]", "answer 2",
        ]  # fmt: skip
    assert "[r1: 6 tokens in 3 choices]" in out.err


def test_chat_json_keeps_every_choice(capsys):
    assert (
        commands._cmd_chat(ScriptedClient(), _args("chat", "--model", "ring", "--n", "2", "--json", "hi"))
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert [c["text"] for c in record["choices"]] == ["answer 0", "answer 1"]


def test_chat_stream_of_several_choices_is_a_usage_error(capsys):
    args = _args("chat", "--model", "ring", "--stream", "-n", "2", "--address", "127.0.0.1:1", "hello")
    assert args.func(args) == 2  # refused before connecting (nothing listens on port 1)
    err = capsys.readouterr().err
    assert "--stream" in err and "-n 1" in err and "error: --stream needs n = 1" in err


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
    assert options["top_p"] is None and options["n"] is None  # unset options stay unset
    assert "diffusion" not in options


def test_chat_sends_diffusion_flags_as_one_option():
    client = ScriptedClient()
    args = _args(
        "chat", "--model", "llada2", "--decoder", "hierarchy", "--threshold", "0.9", "--low-threshold", "0.5",
        "--block-length", "16", "hello",
    )  # fmt: skip
    commands._cmd_chat(client, args)
    options = client.calls[0][2]
    assert options["diffusion"] == {
        "block_length": 16,
        "threshold": 0.9,
        "decoder": "hierarchy",
        "low_threshold": 0.5,
    }


def test_models_table(capsys):
    assert health._cmd_models(ScriptedClient(), _args("models")) == 0
    lines = capsys.readouterr().out.splitlines()
    header = ["NAME", "FAMILY", "LIVE", "WORKERS", "MAX", "MODEL", "LEN", "MODALITIES", "OUTPUTS"]
    assert lines[0].split() == header
    assert lines[1].split() == ["ling", "ling", "2", "4096", "text", "text"]
    assert lines[2].split() == ["ming-omni", "ming", "0", "8192", "text,image", "text,image"]
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
    assert health._healthcheck(_args("healthcheck", "--worker", "ling")) == 2
    assert "BAILING_REDIS_URL" in capsys.readouterr().err


class DiffusionClient(ScriptedClient):
    """Answers like a diffusion model: 8 tokens in 2 forward passes."""

    def generate(self, model, messages=None, **options):
        out = super().generate(model, messages, **options)
        return dataclasses.replace(out, usage=Usage(3, 8, 0, 0, forwards=2))


def test_chat_reports_tokens_per_forward(capsys):
    assert commands._cmd_chat(DiffusionClient(), _args("chat", "--model", "llada2", "hi")) == 0
    assert "[r1: 8 tokens, 4.0 tokens/forward, stop]" in capsys.readouterr().err
    assert commands._cmd_chat(DiffusionClient(), _args("chat", "--model", "llada2", "--json", "hi")) == 0
    usage = json.loads(capsys.readouterr().out)["usage"]
    assert (usage["completion_tokens"], usage["forwards"], usage["tokens_per_forward"]) == (8, 2, 4.0)


def test_chat_help_documents_the_diffusion_flags(capsys):
    with pytest.raises(SystemExit):
        _args("chat", "--help")
    out = capsys.readouterr().out
    assert "diffusion models (llada2)" in out
    for flag in ("--decoder", "--threshold", "--block-length", "--steps", "--low-threshold"):
        assert flag in out
