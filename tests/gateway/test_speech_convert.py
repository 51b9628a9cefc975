"""SynthesizeSpeechRequest / GenerateRequest.speech -> speech job validation, speech batch items, ListModels'
voices (no server); every rejection is INVALID_ARGUMENT naming its field."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gateway.api import pb
from gateway.batch_convert import parse_batch, result_to_pb
from gateway.config import GatewayConfig
from gateway.convert import model_info, request_to_job
from gateway.errors import Rejection
from gateway.speech import chat_request_to_job, speech_request_to_job
from gateway.state import ModelState
from pipelines.batches import ItemResult
from pipelines.protocol import GenerateJob, SpeechOptions, WorkerInfo, media_key

CFG = GatewayConfig(redis_url="redis://unused", models=("ming2", "ling"), max_speaker_audio_bytes=4096)
WAV = b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 32
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
VOICES = ("DB30", "lingxiao")


def worker(model="ming2", outputs=("text", "audio"), voices=VOICES, modalities=("text",), wid="w1"):
    return WorkerInfo(wid, model, "ming", "h", 1, "cpu", 4, 2048, modalities, outputs, voices)


MING2 = ModelState("ming2", (worker(),))
TEXT_OUT = ModelState("ling", (worker("ling", outputs=("text",), voices=()),))


def request(**kw) -> pb.SynthesizeSpeechRequest:
    kw.setdefault("model", "ming2")
    kw.setdefault("text", "Hello there.")
    return pb.SynthesizeSpeechRequest(**kw)


def convert(req, state: ModelState | None = MING2, cfg: GatewayConfig = CFG):
    return speech_request_to_job(req, cfg, state, submitted_at=1000.0, deadline=1010.0)


def rejection(req, state: ModelState | None = MING2, to_job=speech_request_to_job) -> Rejection:
    with pytest.raises(Rejection) as info:
        to_job(req, CFG, state, submitted_at=1000.0)
    return info.value


# ---- SynthesizeSpeechRequest -> job -------------------------------------------------------------
def test_every_option_reaches_the_job():
    req = request(
        voice="DB30", speed=1.25, sample_rate=24000, format="PCM", seed=42, temperature=0.5,
        guidance_scale=3.0, instruction="warm and slow", request_id="tts-1", priority=3,
    )  # fmt: skip
    job, blobs = convert(req)
    assert (job.task, job.request_id, job.model, job.priority, job.prompt) == (
        "speech",
        "tts-1",
        "ming2",
        3,
        None,
    )
    assert (job.submitted_at, job.deadline, blobs) == (1000.0, 1010.0, [])
    assert job.speech == SpeechOptions(
        voice="DB30", speaker_text="", speed=1.25, sample_rate=24000, format="pcm", seed=42,
        temperature=0.5, guidance_scale=3.0, instruction="warm and slow",
    )  # fmt: skip
    (message,) = job.messages
    assert message.role == "user" and [(p.type, p.text) for p in message.parts] == [("text", "Hello there.")]
    assert GenerateJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job  # survives Celery's JSON


def test_unset_fields_take_the_model_defaults():
    job, _ = convert(request())
    assert job.speech == SpeechOptions()  # format "" -> wav, the rest None / ""
    assert len(job.request_id) == 32 and job.sampling.n == 1
    job, _ = convert(request(format=" Opus ", seed=0, temperature=0.0, guidance_scale=0.0, speed=0.5))
    assert (job.speech.format, job.speech.seed, job.speech.temperature) == ("opus", 0, 0.0)
    assert (job.speech.guidance_scale, job.speech.speed) == (0.0, 0.5)  # zero is a value, not "unset"


def test_the_speaker_clip_is_stored_and_carried_before_the_text():
    req = request(speaker_audio=pb.Media(data=WAV), speaker_text="what the clip says")
    job, blobs = convert(req)  # the model accepts no audio *input*: the talker encodes the clip itself
    clip, text = job.messages[0].parts
    assert (clip.type, text.type, text.text) == ("audio", "text", "Hello there.")
    assert (clip.media.kind, clip.media.mime_type, clip.media.size) == ("audio", "audio/wav", len(WAV))
    assert clip.media.key == media_key(hashlib.sha256(WAV).hexdigest())
    assert [(b.key, b.data) for b in blobs] == [(clip.media.key, WAV)]
    assert (job.speech.voice, job.speech.speaker_text) == ("", "what the clip says")


def test_live_checks_are_skipped_without_workers():
    job, _ = convert(request(model="ling", voice="anyone"), state=None)
    assert (job.task, job.speech.voice) == ("speech", "anyone")


def test_a_model_without_audio_output_is_rejected():
    err = rejection(request(model="ling"), state=TEXT_OUT)
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.message == "model 'ling' does not synthesize speech (outputs: text)"


def test_voices_are_checked_against_what_the_workers_announce():
    err = rejection(request(voice="nobody"))
    assert err.message == "voice 'nobody' is not a voice of model 'ming2' (voices: DB30, lingxiao)"
    silent = ModelState("ming2", (worker(voices=()),))  # announces none: the worker checks
    assert convert(request(voice="nobody"), state=silent)[0].speech.voice == "nobody"
    two = ModelState("ming2", (worker(), worker(voices=("lingxiao", "x"), wid="w2")))
    assert two.voices == ("lingxiao",)  # only what every live worker has
    assert rejection(request(voice="DB30"), state=two).message.endswith("(voices: lingxiao)")


def test_unknown_model_is_not_found():
    assert rejection(request(model="cosyvoice")).code is grpc.StatusCode.NOT_FOUND


# (id, request kwargs, the message or a fragment of it); every one INVALID_ARGUMENT naming the field
CLIP = pb.Media(data=WAV)
BAD = [
    ("no-model", {"model": ""}, "model is empty"),
    ("request-id", {"request_id": "a b"}, "request_id must match"),
    ("empty-text", {"text": ""}, "text is empty: send the text to speak"),
    ("blank-text", {"text": " \n\t"}, "text is empty"),
    ("long-text", {"text": "x" * 2001},
     "text is 2001 characters, at most 2000 are allowed (max_speech_text_chars)"),
    ("long-speaker-text", {"speaker_audio": CLIP, "speaker_text": "y" * 2001}, "speaker_text is 2001"),
    ("long-instruction", {"instruction": "z" * 2001}, "instruction is 2001 characters"),
    ("format", {"format": "mp3"}, "format must be one of wav, pcm, opus, got 'mp3'"),
    ("speed-low", {"speed": 0.4}, "speed must be in [0.5, 2], got 0.4"),
    ("speed-high", {"speed": 2.1}, "speed must be in [0.5, 2], got 2.1"),
    ("speed-nan", {"speed": float("nan")}, "speed must be in [0.5, 2], got nan"),
    ("rate-low", {"sample_rate": 7999}, "sample_rate must be in [8000, 48000] Hz, got 7999"),
    ("rate-high", {"sample_rate": 48001}, "sample_rate must be in [8000, 48000] Hz, got 48001"),
    ("rate-odd", {"sample_rate": 9000}, "sample_rate must be one of 8000, 11025, 12000, 16000, 22050"),
    ("rate-opus", {"sample_rate": 44100, "format": "opus"},
     "sample_rate must be one of 8000, 12000, 16000, 24000, 48000 for format opus, got 44100"),
    ("seed", {"seed": -1}, "seed must be in [0, 9223372036854775807], got -1"),
    ("temperature-low", {"temperature": -0.1}, "temperature must be in [0, 2], got -0.1"),
    ("temperature-high", {"temperature": 2.5}, "temperature must be in [0, 2], got 2.5"),
    ("temperature-inf", {"temperature": float("inf")}, "temperature must be in [0, 2], got inf"),
    ("guidance-low", {"guidance_scale": -1}, "guidance_scale must be in [0, 20], got -1"),
    ("guidance-high", {"guidance_scale": 20.5}, "guidance_scale must be in [0, 20], got 20.5"),
    ("voice-and-clip", {"voice": "DB30", "speaker_audio": CLIP}, "voice and speaker_audio are both set"),
    ("clip-too-large", {"speaker_audio": pb.Media(data=WAV + b"\0" * 5000)},
     "speaker_audio is 5048 bytes, at most 4096 are allowed (max_speaker_audio_bytes)"),
    ("clip-not-audio", {"speaker_audio": pb.Media(data=b"hello")}, "speaker_audio: not a decodable audio"),
    ("clip-is-image", {"speaker_audio": pb.Media(data=PNG)}, "they look like PNG image"),
    ("clip-mime", {"speaker_audio": pb.Media(data=WAV, mime_type="audio/mpeg")},
     "speaker_audio: mime_type audio/mpeg does not match"),
    ("clip-mime-only", {"speaker_audio": pb.Media(mime_type="audio/wav")}, "speaker_audio.data is empty"),
    ("speaker-text-alone", {"speaker_text": "hi"},
     "speaker_text is what speaker_audio says, and speaker_audio is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_requests_are_invalid_argument_naming_the_field(kwargs, fragment):
    err = rejection(request(**kwargs))
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.message


# ---- GenerateRequest.speech -> a spoken chat job ------------------------------------------------
def chat(speech: pb.SpeechOptions | None = None, model: str = "ming2", **kw) -> pb.GenerateRequest:
    msg = pb.Message(role="user", content=[pb.ContentPart(text="Tell me a joke.")])
    req = pb.GenerateRequest(model=model, messages=[msg], **kw)
    if speech is not None:
        req.speech.CopyFrom(speech)
    return req


def test_chat_speech_options_reach_the_job():
    speech = pb.SpeechOptions(
        voice="lingxiao", format="opus", sample_rate=24000, speed=1.5, seed=3, temperature=0.25,
        guidance_scale=2.0, instruction="cheerful",
    )  # fmt: skip
    job, _ = chat_request_to_job(chat(speech), CFG, MING2, submitted_at=1.0)
    assert job.task == "generate" and job.messages[0].parts[0].text == "Tell me a joke."
    assert job.speech == SpeechOptions(
        voice="lingxiao", speed=1.5, sample_rate=24000, format="opus", seed=3, temperature=0.25,
        guidance_scale=2.0, instruction="cheerful",
    )  # fmt: skip
    assert GenerateJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    job, _ = chat_request_to_job(chat(pb.SpeechOptions()), CFG, MING2, submitted_at=1.0)
    assert job.speech == SpeechOptions()  # an empty message: spoken with the defaults


def test_a_chat_without_speech_is_the_plain_job():
    req = chat(request_id="c1")
    plain, _ = request_to_job(req, CFG, TEXT_OUT, submitted_at=1.0)
    assert chat_request_to_job(req, CFG, TEXT_OUT, submitted_at=1.0)[0] == plain and plain.speech is None


SPEECH = pb.SpeechOptions
CHAT_BAD = [
    ("speed", chat(SPEECH(speed=3)), MING2, "speech.speed must be in [0.5, 2], got 3"),
    ("format", chat(SPEECH(format="flac")), MING2, "speech.format must be one of wav, pcm, opus"),
    ("rate", chat(SPEECH(sample_rate=100)), MING2, "speech.sample_rate must be in [8000, 48000]"),
    ("seed", chat(SPEECH(seed=-5)), MING2, "speech.seed must be in [0, "),
    ("voice", chat(SPEECH(voice="x")), MING2, "speech.voice 'x' is not a voice of model 'ming2'"),
    ("guidance", chat(SPEECH(guidance_scale=99)), MING2, "speech.guidance_scale must be in [0, 20]"),
    ("n", chat(SPEECH(), sampling=pb.SamplingParams(n=2)), MING2, "sampling.n must be 1 for a spoken reply"),
    ("outputs", chat(SPEECH(), model="ling"), TEXT_OUT, "model 'ling' does not synthesize speech"),
    ("chat-field", chat(SPEECH(), sampling=pb.SamplingParams(top_p=0)), MING2, "sampling.top_p must be in"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("req", "state", "fragment"), [c[1:] for c in CHAT_BAD], ids=[c[0] for c in CHAT_BAD]
)
def test_bad_chat_speech_is_invalid_argument_naming_the_field(req, state, fragment):
    err = rejection(req, state, to_job=chat_request_to_job)
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT and fragment in err.message


# ---- batches ------------------------------------------------------------------------------------
def parse(req: pb.CreateBatchRequest, state: ModelState | None = MING2):
    return parse_batch(req, CFG, state, batch_id="batch_s", submitted_at=5.0)


def test_speech_items_come_inline_or_as_jsonl():
    inline = pb.BatchItem(custom_id="a", speech_request=request(model="", text="one", voice="DB30"))
    specs = parse(pb.CreateBatchRequest(model="ming2", items=[inline]))
    (a,) = specs
    assert (a.job.task, a.job.request_id, a.job.speech.voice, a.job.messages[0].parts[0].text) == (
        "speech", "batch_s-0", "DB30", "one",
    )  # fmt: skip
    clip = base64.b64encode(WAV).decode()
    lines = [
        {
            "custom_id": "b",
            "method": "SynthesizeSpeech",
            "body": {"text": "two", "format": "opus", "speed": 1.5},
        },
        {
            "custom_id": "c",
            "method": "SynthesizeSpeech",
            "body": {"text": "3", "speakerAudio": {"data": clip}},
        },
    ]
    b, c = parse(pb.CreateBatchRequest(model="ming2", jsonl="\n".join(map(json.dumps, lines)).encode()))
    assert (b.job.speech.format, b.job.speech.speed, b.job.messages[0].parts[0].text) == ("opus", 1.5, "two")
    assert [p.type for p in c.job.messages[0].parts] == ["audio", "text"] and c.blobs[0].data[:4] == b"RIFF"


def test_bad_speech_items_are_invalid_with_a_clear_message():
    lines = [
        {"custom_id": "a", "method": "SynthesizeSpeech", "body": {"text": "x", "speed": 9}},
        {"custom_id": "b", "method": "SynthesizeSpeech", "body": {"text": ""}},
        {"custom_id": "c", "body": {"prompt": "hi", "speech": {"voice": "DB30"}}},
        {"custom_id": "d", "method": "SynthesizeSpeech", "body": {"text": "fine"}},
    ]
    specs = parse(
        pb.CreateBatchRequest(
            model="ming2", jsonl="\n".join(map(json.dumps, lines)).encode(), skip_invalid_items=True
        )
    )
    assert [s.error for s in specs[:3]] == [
        "line 1: speed must be in [0.5, 2], got 9",
        "line 2: text is empty: send the text to speak",
        "line 3: speech: spoken chat replies are not batched; use SynthesizeSpeech items to make audio",
    ]
    assert specs[3].job.task == "speech"
    both = pb.BatchItem(custom_id="x", request=pb.GenerateRequest(prompt="hi"), speech_request=request())
    (spec,) = parse(pb.CreateBatchRequest(model="ming2", items=[both], skip_invalid_items=True))
    assert spec.error == "items[0]: request and speech_request are both set"
    three = pb.BatchItem(custom_id="y", request=pb.GenerateRequest(prompt="hi"), speech_request=request())
    three.image_request.prompt = "fox"
    (spec,) = parse(pb.CreateBatchRequest(model="ming2", items=[three], skip_invalid_items=True))
    assert spec.error == "items[0]: request and image_request and speech_request are all set"
    item = pb.BatchItem(custom_id="z", speech_request=request(model=""))
    with pytest.raises(Rejection, match="model 'ling' does not synthesize speech"):
        parse(pb.CreateBatchRequest(model="ling", items=[item]), TEXT_OUT)


@dataclass(frozen=True)
class SpeechItemResult(ItemResult):
    """ItemResult plus the field a worker that runs speech items sets (see gateway/batch_convert.py)."""

    speech_response: dict[str, Any] | None = None


def test_a_speech_item_result_becomes_speech_response():
    stored = {"audio": "UklGRg==", "format": "wav", "sampleRate": 16000, "seed": "9", "usage": {"chunks": 2}}
    out = result_to_pb(SpeechItemResult(3, "s", speech_response=stored))
    assert out.WhichOneof("outcome") == "speech_response"
    r = out.speech_response
    assert (out.index, r.audio, r.format, r.sample_rate, r.seed, r.usage.chunks) == (
        3,
        b"RIFF",
        "wav",
        16000,
        9,
        2,
    )
    assert result_to_pb(ItemResult(0, "t", response={"text": "hi"})).response.text == "hi"  # unchanged


def test_list_models_reports_voices():
    info = model_info(MING2)
    assert (list(info.outputs), list(info.voices)) == (["text", "audio"], list(VOICES))
    assert list(model_info(TEXT_OUT).voices) == [] and list(model_info(ModelState("x")).voices) == []
