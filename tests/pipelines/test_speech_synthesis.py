"""The speech plan: a job -> segments, voice and settings; every bad input is a RequestError naming the
field (tiny speaking checkpoint: the golden talker + VAE, tiny CAM++, two presets)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from engine.errors import RequestError
from models.ming.speech.speech_model import SpeechModel
from pipelines.protocol import ChatMessage, GenerateJob, MediaRef, Part, SpeechOptions, media_key
from pipelines.speech_synthesis import SpeechLimits, plan, settings
from tests.models.ming.speech_checkpoint import tone, wav_bytes, write_speech_checkpoint
from tests.models.ming.speech_golden import available

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
LIMITS = SpeechLimits(
    max_text_chars=200, max_audio_seconds=10.0, max_clip_seconds=3.0, max_clip_bytes=400_000
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = write_speech_checkpoint(tmp_path_factory.mktemp("speaking"))
    return SpeechModel.load(root, torch.device("cpu"), torch.float32)


class Store:
    """Media bytes by key, as the gateway parks them (here a dict; the worker reads Redis)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put(self, data: bytes, mime: str = "audio/wav") -> MediaRef:
        key = media_key(hashlib.sha256(data).hexdigest())
        self.data[key] = data
        return MediaRef("audio", key, mime, len(data))

    def __call__(self, ref: MediaRef) -> bytes | None:
        return self.data.get(ref.key)


def job(
    text: str = "今天天气很好，我们一起去公园散步吧。", clip: MediaRef | None = None, **options
) -> GenerateJob:
    parts = (Part("text", text=text),) + ((Part("audio", media=clip),) if clip else ())
    return GenerateJob(
        request_id="r", model="ming", messages=(ChatMessage("user", parts),), task="speech",
        speech=SpeechOptions(**options),
    )  # fmt: skip


def test_defaults(model):
    p = plan(job(), model, LIMITS)
    s = p.settings
    assert p.segments == ("今天天气很好，我们一起去公园散步吧。",)
    assert s.voice_name == "DB30" and s.voice is model.voices["DB30"]
    assert (s.sampling.cfg, s.sampling.sigma, s.sampling.temperature) == (2.0, 0.25, 0.0)
    assert (s.speed, s.sample_rate, s.format, s.instruction) == (1.0, 16000, "wav", None)
    assert 0 <= s.seed < 2**31  # random, reported back
    assert s.max_patches == int(10.0 / model.seconds_per_patch)


def test_options(model):
    s = plan(job(voice="bright", seed=5, speed=2.0, sample_rate=24000, format="OPUS", temperature=0.5,
                 guidance_scale=3.0, instruction="calm"), model, LIMITS).settings  # fmt: skip
    assert (s.voice_name, s.seed, s.speed, s.sample_rate, s.format) == ("bright", 5, 2.0, 24000, "opus")
    assert (s.sampling.cfg, s.sampling.temperature, s.instruction) == (3.0, 0.5, "calm")
    assert s.max_patches == int(20.0 / model.seconds_per_patch)  # 10 s out at double speed
    assert s.segment_seed(3) == 8


def test_speaker_clip_becomes_the_voice(model):
    store = Store()
    clip = store.put(wav_bytes(tone(1.5, 22050), 22050))
    p = plan(job(clip=clip, speaker_text="Hello there."), model, LIMITS, store)
    assert p.settings.voice_name == "" and p.settings.voice.prompt_text == "Hello there."
    assert p.settings.voice.speakers.shape == (1, 64)
    again = plan(job(clip=clip), model, LIMITS, store).settings.voice
    assert again.prompt_text is None and torch.equal(again.prompt_latents, p.settings.voice.prompt_latents)


def bad(model, field: str, j: GenerateJob, fetch=None, limits=LIMITS) -> str:
    with pytest.raises(RequestError) as info:
        plan(j, model, limits, fetch)
    assert field in str(info.value), str(info.value)
    return str(info.value)


def test_unknown_voice_lists_the_known_ones(model):
    message = bad(model, "voice", job(voice="nobody"))
    assert "'nobody'" in message and "DB30, bright" in message


def test_bad_options_name_their_field(model):
    bad(model, "format", job(format="mp3"))
    bad(model, "speed", job(speed=0.4))
    bad(model, "speed", job(speed=2.5))
    bad(model, "speed", job(speed=float("nan")))
    bad(model, "sample_rate", job(sample_rate=7000))
    bad(model, "sample_rate", job(sample_rate=96000))
    bad(model, "sample_rate", job(sample_rate=44100, format="opus"))
    bad(model, "seed", job(seed=-1))
    bad(model, "seed", job(seed="7"))
    bad(model, "temperature", job(temperature=-0.1))
    bad(model, "guidance_scale", job(guidance_scale=100.0))
    bad(model, "speaker_text", job(speaker_text="no clip"))


def test_bad_text(model):
    bad(model, "text", job(""))
    bad(model, "text", job("   \n"))
    bad(model, "text", job("。。。!!"))
    bad(model, "text", job("字" * 201))


def test_bad_speaker_clips(model):
    store = Store()
    ok = store.put(wav_bytes(tone(1.5, 16000), 16000))
    bad(model, "speaker_audio", job(clip=ok, voice="DB30"), store)  # voice and clip both
    bad(model, "speaker_audio", job(clip=store.put(wav_bytes(tone(0.5, 16000), 16000))), store)  # too short
    bad(model, "speaker_audio", job(clip=store.put(wav_bytes(tone(4.0, 8000), 8000))), store)  # too long
    bad(model, "speaker_audio", job(clip=store.put(b"RIFF....not audio at all")), store)  # undecodable
    big = store.put(wav_bytes(tone(2.9, 48000), 48000))  # 2.9 s but 278 kB at 48 kHz
    bad(model, "speaker_audio", job(clip=big), store, SpeechLimits(max_clip_bytes=100_000))
    gone = MediaRef("audio", media_key("0" * 64), "audio/wav", 10)
    bad(model, "speaker_audio", job(clip=gone), store)
    two = GenerateJob(
        request_id="r", model="ming", task="speech", speech=SpeechOptions(),
        messages=(ChatMessage("user", (Part("text", text="hi there"), Part("audio", media=ok),
                                       Part("audio", media=ok))),),
    )  # fmt: skip
    bad(model, "speaker_audio", two, store)


def test_the_message_shape(model):
    image = MediaRef("image", "k", "image/png", 3)
    with_image = GenerateJob(
        request_id="r", model="ming", task="speech", speech=SpeechOptions(),
        messages=(ChatMessage("user", (Part("text", text="hello"), Part("image", media=image))),),
    )  # fmt: skip
    bad(model, "speaker clip", with_image)
    prompt = GenerateJob(
        request_id="r", model="ming", task="speech", speech=SpeechOptions(), prompt="Hi there."
    )
    assert plan(prompt, model, LIMITS).segments == ("Hi there.",)


def test_chat_settings_take_no_clip(model):
    s = settings(SpeechOptions(voice="bright", format="pcm"), model, LIMITS)
    assert s.voice_name == "bright" and s.format == "pcm"
    with pytest.raises(RequestError, match="speaker_text"):
        settings(SpeechOptions(speaker_text="x"), model, LIMITS)


def test_no_presets_means_no_voice(tmp_path):
    root = write_speech_checkpoint(tmp_path, presets=None)
    model = SpeechModel.load(root, torch.device("cpu"), torch.float32)
    assert plan(job(), model, LIMITS).settings.voice is None
    message = bad(model, "voice", job(voice="DB30"))
    assert "no voice presets" in message
