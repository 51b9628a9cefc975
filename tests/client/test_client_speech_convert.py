"""Speech in the client without a server: request building (SynthesizeSpeechRequest, chat `speech=`),
reply conversion, speech items of a batch, the streaming file writer (wav header rewrite, pcm, opus
pages) and the CLI's arguments."""

from __future__ import annotations

import base64
import json

import pytest

from bailing.cli import build_parser
from bailing.client import (
    AudioChunk,
    BailingClientError,
    SpeechFileWriter,
    SpeechResult,
    SpeechUsage,
    Timing,
    build_request,
    write_speech,
)
from bailing.client_batch import BatchItemResult, batch_result_from_pb, build_batch_request
from bailing.client_speech import (
    audio_chunk_from_pb,
    build_speech_request,
    chunk_with_audio,
    completion_with_speech,
    speech_result_from_pb,
    speech_result_to_pb,
)
from bailing.commands import speech as command
from gateway.api import pb
from pipelines.audio_files import assemble
from tests.gateway.audio_data import opus_chunks, pcm_chunks, pcm_tone, read_audio

WAV_CLIP = assemble("wav", 16000, [pcm_tone(0.5, 16000)])


# ---- request building and replies (no server) --------------------------------------------------
def test_only_the_options_given_are_set(tmp_path):
    req = build_speech_request("ming2", "hello")
    assert (req.model, req.text, req.format, req.voice, req.priority) == ("ming2", "hello", "wav", "", 0)
    for name in ("speed", "sample_rate", "seed", "temperature", "guidance_scale"):
        assert not req.HasField(name), name
    assert not req.HasField("speaker_audio")
    clip = tmp_path / "me.wav"
    clip.write_bytes(WAV_CLIP)
    req = build_speech_request(
        "ming2", "hi", speaker_audio=clip, speaker_text="it is me", speed=0.75, sample_rate=22050,
        format="opus", seed=0, temperature=0.0, guidance_scale=2.5, instruction="slowly",
        request_id="r1", priority=2,
    )  # fmt: skip
    assert (req.speaker_audio.data, req.speaker_text) == (WAV_CLIP, "it is me")
    assert req.speaker_audio.mime_type in ("audio/wav", "audio/x-wav")  # from the file name
    assert (req.speed, req.sample_rate, req.format, req.seed, req.temperature) == (
        0.75,
        22050,
        "opus",
        0,
        0.0,
    )
    assert req.HasField("seed") and req.HasField("temperature")  # zero is a value, not "unset"
    assert (req.guidance_scale, req.instruction, req.request_id, req.priority) == (2.5, "slowly", "r1", 2)
    req = build_speech_request("ming2", "hi", speaker_audio=WAV_CLIP, speaker_audio_mime_type="audio/x-wav")
    assert req.speaker_audio.mime_type == "audio/x-wav"
    for bad, fragment in [
        (3, "bytes or a file path is required, got int"),
        (tmp_path / "no.wav", "cannot read"),
    ]:
        with pytest.raises(BailingClientError, match=fragment) as info:
            build_speech_request("ming2", "hi", speaker_audio=bad)
        assert info.value.code == "INVALID_ARGUMENT" and "speaker_audio" in info.value.details
    with pytest.raises(BailingClientError, match="model: a model name is required"):
        build_speech_request("", "hi")
    with pytest.raises(BailingClientError, match="text: a string is required, got bytes"):
        build_speech_request("ming2", b"hi")
    with pytest.raises(TypeError):
        build_speech_request("ming2", "hi", pitch=2)


def test_chat_requests_take_speech_options():
    req = build_request("ming2", "hi", speech={"voice": "DB30", "format": "opus", "speed": 1.5, "seed": None})
    assert req.HasField("speech") and (req.speech.voice, req.speech.format, req.speech.speed) == (
        "DB30",
        "opus",
        1.5,
    )
    assert not req.speech.HasField("seed")
    assert build_request("ming2", "hi", speech={}).HasField("speech")  # spoken with the defaults
    assert not build_request("ming2", "hi").HasField("speech")
    with pytest.raises(BailingClientError, match=r"speech: unknown option\(s\) \['pitch'\]"):
        build_request("ming2", "hi", speech={"pitch": 2})
    with pytest.raises(BailingClientError, match="speech: a dict of options is required, got str"):
        build_request("ming2", "hi", speech="DB30")


SUMMARY = pb.SynthesizeSpeechResponse(
    request_id="r", model="ming2", audio=b"RIFF...", mime_type="audio/wav", format="wav", sample_rate=16000,
    duration_s=1.5, seed=7, usage=pb.SpeechUsage(prompt_tokens=4, latent_frames=12, chunks=3),
    timing=pb.Timing(queue_s=0.1, time_to_first_token_s=0.4, total_s=1.0), finish_reason="length",
)  # fmt: skip
RESULT = SpeechResult(
    "r",
    "ming2",
    b"RIFF...",
    "audio/wav",
    "wav",
    16000,
    1.5,
    7,
    SpeechUsage(4, 12, 3),
    Timing(0.1, 0.4, 1.0),
    "length",
)


def test_replies_become_dataclasses(tmp_path):
    assert speech_result_from_pb(SUMMARY) == RESULT
    assert speech_result_to_pb(RESULT) == SUMMARY
    assert RESULT.save(tmp_path / "a.wav").read_bytes() == b"RIFF..."
    msg = pb.SpeechChunk(
        request_id="r", index=1, audio=b"ab", sample_rate=16000, start_s=0.5, duration_s=0.25, text="hi"
    )
    assert audio_chunk_from_pb(msg) == AudioChunk("r", 1, b"ab", 16000, 0.5, 0.25, "hi")
    last = audio_chunk_from_pb(pb.SpeechChunk(request_id="r", index=3, last=True, summary=SUMMARY))
    assert (last.last, last.audio, last.summary) == (True, b"", RESULT)
    completion = completion_with_speech(pb.GenerateResponse(request_id="r", text="hello", speech=SUMMARY))
    assert (completion.text, completion.speech) == ("hello", RESULT)
    assert completion_with_speech(pb.GenerateResponse(text="x")).speech is None
    chunk = chunk_with_audio(pb.GenerateChunk(request_id="r", audio=msg))
    assert (chunk.text, chunk.audio) == ("", audio_chunk_from_pb(msg))
    assert chunk_with_audio(pb.GenerateChunk(text="x")).audio is None


def test_speech_items_of_a_batch_and_their_results(tmp_path):
    items = [("t", {"prompt": "hi"}), ("s", {"method": "SynthesizeSpeech", "text": "hello", "voice": "DB30"})]
    text, speech = build_batch_request("ming2", None, items).items
    assert text.request.prompt == "hi" and (speech.speech_request.text, speech.speech_request.voice) == (
        "hello",
        "DB30",
    )
    got = batch_result_from_pb(pb.BatchResult(index=0, custom_id="s", speech_response=SUMMARY))
    assert got == BatchItemResult(0, "s", speech_response=RESULT)
    line = json.loads(got.to_json_line())
    assert set(line) == {"custom_id", "speech_response"}
    assert (
        base64.b64decode(line["speech_response"]["audio"]) == b"RIFF..."
        and line["speech_response"]["seed"] == "7"
    )


# ---- the file writer --------------------------------------------------------------------------
def as_chunks(payloads: list[bytes], rate: int, summary: SpeechResult | None = RESULT) -> list[AudioChunk]:
    chunks = [AudioChunk("r", i, p, rate, 0.0, 0.0) for i, p in enumerate(payloads)]
    return [*chunks, AudioChunk("r", len(payloads), b"", rate, 0.0, 0.0, last=True, summary=summary)]


def test_a_streamed_wav_gets_its_header_rewritten(tmp_path):
    path = tmp_path / "out.wav"
    payloads = pcm_chunks(0.4, 22050, 3)
    with SpeechFileWriter(path, "wav") as writer:
        for chunk in as_chunks(payloads, 22050):
            writer.write(chunk)
            assert path.stat().st_size == writer.file_bytes  # the file grows as chunks arrive
    samples, rate = read_audio(path.read_bytes())
    assert rate == 22050 and samples.tobytes() == pcm_tone(0.4, 22050)
    assert path.read_bytes() == assemble("wav", 22050, payloads)  # the same bytes as a unary reply
    assert (writer.chunks, writer.summary) == (3, RESULT)


def test_pcm_and_opus_files_are_the_chunks(tmp_path):
    payloads = pcm_chunks(0.2, 16000, 2)
    assert write_speech(as_chunks(payloads, 16000), tmp_path / "a.pcm", "pcm") == RESULT
    assert (tmp_path / "a.pcm").read_bytes() == pcm_tone(0.2, 16000)
    whole, pages = opus_chunks(3.0, 16000, 3)
    assert write_speech(as_chunks(pages, 16000, None), tmp_path / "a.opus", "opus") is None
    assert (tmp_path / "a.opus").read_bytes() == whole
    assert read_audio(whole)[1] == 16000


def test_a_failed_stream_leaves_no_file(tmp_path):
    def failing():
        yield AudioChunk("r", 0, b"\0\0", 16000, 0.0, 0.0)
        raise BailingClientError("INTERNAL", "boom")

    with pytest.raises(BailingClientError):
        write_speech(failing(), tmp_path / "x.wav", "wav")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="format must be one of wav, pcm, opus"):
        SpeechFileWriter(tmp_path / "x.mp3", "mp3")


def test_cli_arguments():
    names = ("a.WAV", "a.pcm", "a.raw", "a.opus", "a.ogg", "a", None)
    formats = ["wav", "pcm", "pcm", "opus", "opus", "wav", "wav"]
    assert [command.output_format(None, n) for n in names] == formats
    assert command.output_format("pcm", "a.wav") == "pcm"
    args = build_parser().parse_args([
        "speak", "--model", "ming2", "-o", "x.opus", "--voice", "DB30", "--speed", "1.5",
        "--sample-rate", "24000", "--seed", "3", "--temperature", "0.5", "--guidance", "2",
        "--instruction", "calm", "--stream", "hello",
    ])  # fmt: skip
    assert (args.text, args.output, args.stream, args.format) == ("hello", "x.opus", True, None)
    args.format = command.output_format(args.format, args.output)
    assert command.speech_options(args) == {
        "voice": "DB30", "speaker_text": None, "speed": 1.5, "sample_rate": 24000, "seed": 3,
        "temperature": 0.5, "instruction": "calm", "speaker_audio": None, "guidance_scale": 2.0,
        "format": "opus",
    }  # fmt: skip
    chat = build_parser().parse_args(
        ["chat", "--model", "ming2", "--speak", "o.wav", "--voice", "DB30", "hi"]
    )
    assert (chat.speak, chat.voice, chat.force, chat.text) == ("o.wav", "DB30", False, "hi")
