"""`Client.transcribe`'s request building and result conversion, and `bailing transcribe` (argument
parsing, output, exit codes) with a stand-in client; the real client against a real gateway runs in
tests/gateway/test_transcribe.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bailing.cli import build_parser
from bailing.client import BailingClientError, Chunk, Timing, Transcription, Usage
from bailing.client_transcribe import build_transcribe_request, transcription_from_pb
from bailing.commands import client as commands
from gateway.api import pb

WAV = b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 16
MP3 = b"ID3\x04" + b"\0" * 16


def _invalid(call, match: str) -> BailingClientError:
    with pytest.raises(BailingClientError, match=match) as info:
        call()
    assert info.value.code == "INVALID_ARGUMENT"
    return info.value


# ---- request building --------------------------------------------------------------------------
def test_bytes_become_the_audio_with_a_sniffed_mime_type():
    req = build_transcribe_request("ming", WAV)
    assert isinstance(req, pb.TranscribeRequest)
    assert (req.model, req.audio.data, req.audio.mime_type) == ("ming", WAV, "audio/wav")
    assert (req.request_id, req.priority) == ("", 0)
    assert not req.sampling.HasField("max_tokens") and not req.sampling.HasField("n")  # model defaults


def test_a_path_is_read_and_its_name_gives_the_mime_type(tmp_path):
    path = tmp_path / "speech.mp3"
    path.write_bytes(MP3)
    for audio in (path, str(path)):
        req = build_transcribe_request("ming", audio)
        assert (req.audio.data, req.audio.mime_type) == (MP3, "audio/mpeg")


def test_options_reach_the_request():
    req = build_transcribe_request(
        "ming", bytearray(WAV), mime_type="audio/x-wav", max_tokens=32, temperature=0.0,
        seed=3, stop="\n", request_id="tr-1", priority=-1,
    )  # fmt: skip
    assert (req.audio.data, req.audio.mime_type) == (WAV, "audio/x-wav")
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.seed, list(s.stop)) == (32, 0.0, 3, ["\n"])
    assert (req.request_id, req.priority) == ("tr-1", -1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "", "audio": WAV}, "model: a model name is required"),
        ({"model": "ming", "audio": 42}, "audio: bytes or a file path is required, got int"),
        ({"model": "ming", "audio": "/no/such/speech.wav"}, "audio: cannot read /no/such/speech.wav"),
    ],
)
def test_bad_arguments_are_refused_before_sending(kwargs, match):
    _invalid(lambda: build_transcribe_request(**kwargs), match)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="enable_thinking"):
        build_transcribe_request("ming", WAV, enable_thinking=True)


def test_response_becomes_a_transcription():
    msg = pb.TranscribeResponse(
        request_id="r", model="ming", text="hello", finish_reason="length",
        usage=pb.Usage(prompt_tokens=40, completion_tokens=2),
        timing=pb.Timing(queue_s=0.5, time_to_first_token_s=1.0, total_s=2.0),
    )  # fmt: skip
    assert transcription_from_pb(msg) == Transcription(
        "r", "ming", "hello", "length", Usage(40, 2), Timing(0.5, 1.0, 2.0)
    )


# ---- bailing transcribe ------------------------------------------------------------------------
class _Stream(list):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class ScriptedClient:
    """Answers every transcription with fixed text and records what it was called with."""

    def __init__(self, finish_reason: str = "stop") -> None:
        self.calls = []
        self.finish_reason = finish_reason

    def transcribe(self, model, audio, **options):
        self.calls.append((model, audio, options))
        return Transcription("r1", model, "hello world", self.finish_reason, Usage(40, 2), Timing())

    def transcribe_stream(self, model, audio, **options):
        self.calls.append((model, audio, options))
        last = Chunk("r1", " world", "", self.finish_reason, Usage(40, 2))
        return _Stream([Chunk("r1", "hello", ""), last])


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.fixture()
def speech(tmp_path) -> Path:
    path = tmp_path / "speech.wav"
    path.write_bytes(WAV)
    return path


def test_parser_reads_the_flags(speech):
    args = _args("transcribe", "--model", "ming", str(speech), "--max-tokens", "7", "--stream")
    assert (args.model, args.audio, args.max_tokens, args.stream) == (
        "ming", str(speech), 7, True,
    )  # fmt: skip
    assert (args.temperature, args.seed, args.mime_type, args.json, args.timeout) == (
        None, None, None, False, None,
    )  # fmt: skip
    assert args.func is commands._transcribe


@pytest.mark.parametrize("stream", [False, True])
def test_prints_the_transcript_and_the_stats(capsys, speech, stream):
    client = ScriptedClient()
    argv = ["transcribe", "--model", "ming", "--max-tokens", "5", str(speech)]
    assert commands._cmd_transcribe(client, _args(*argv, *(["--stream"] if stream else []))) == 0
    model, audio, options = client.calls[0]
    assert (model, audio) == ("ming", str(speech))
    assert options == {
        "mime_type": None,
        "max_tokens": 5,
        "temperature": None,
        "seed": None,
    }
    out = capsys.readouterr()
    assert out.out == "hello world\n"
    assert "[r1: 2 tokens, stop]" in out.err


def test_json_prints_the_whole_transcription(capsys, speech):
    assert (
        commands._cmd_transcribe(
            ScriptedClient(), _args("transcribe", "--model", "ming", "--json", str(speech))
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert (record["text"], record["finish_reason"], record["usage"]["prompt_tokens"]) == (
        "hello world",
        "stop",
        40,
    )


@pytest.mark.parametrize("stream", [False, True])
def test_an_error_finish_exits_1(speech, stream):
    argv = ["transcribe", "--model", "ming", str(speech), *(["--stream"] if stream else [])]
    assert commands._cmd_transcribe(ScriptedClient("error"), _args(*argv)) == 1


def test_missing_file_is_a_usage_error_before_connecting(capsys, tmp_path):
    args = _args("transcribe", "--model", "ming", "--address", "127.0.0.1:1", str(tmp_path / "none.wav"))
    assert args.func(args) == 2
    assert "error: no audio file at" in capsys.readouterr().err


def test_unreachable_gateway_exits_3(capsys, speech, dead_address):
    args = _args("transcribe", "--model", "ming", "--address", dead_address, "--timeout", "5", str(speech))
    assert args.func(args) == 3
    assert "error: UNAVAILABLE" in capsys.readouterr().err


def test_help_lists_the_command(capsys):
    with pytest.raises(SystemExit):
        _args("--help")
    assert "transcribe" in capsys.readouterr().out
