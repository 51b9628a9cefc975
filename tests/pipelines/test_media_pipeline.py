"""pipelines.media on the tiny official Ming checkpoint: job -> processor -> ids + MediaInputs.

Checks the chat text the processor builds, media fetched in part order, part errors renamed to the
request's field path, expired bytes, transcription prompts, and `text.prepare` with the pipeline.
"""

from __future__ import annotations

import pytest
import torch

from engine.errors import RequestError
from models.ming.family import MING
from pipelines.media import MediaPipeline
from pipelines.protocol import ChatMessage, GenerateJob, MediaRef, Part
from tests.models.ming.ming_golden import GOLDEN, TINY
from tests.models.ming.processing_media import (
    golden_image,
    golden_wave,
    mp4_bytes,
    png_bytes,
    ramp_video,
    wav_bytes,
)

pytestmark = pytest.mark.skipif(not (GOLDEN / "expected.json").is_file(), reason="Ming golden data missing")

IMAGE_PATCH, AUDIO_PATCH, VIDEO_PATCH = 997, 1008, 1015


class Store:
    """Media bytes by key, as the gateway parks them in Redis."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def ref(self, kind: str, data: bytes, key: str | None = None) -> MediaRef:
        key = key or f"bailing:media:{kind}{len(self.data)}"
        self.data[key] = data
        return MediaRef(kind=kind, key=key, mime_type="x", size=len(data))

    def get(self, ref: MediaRef) -> bytes | None:
        return self.data.get(ref.key)


@pytest.fixture(scope="module")
def store() -> Store:
    return Store()


@pytest.fixture(scope="module")
def pipeline(store) -> MediaPipeline:
    return MediaPipeline(MING, TINY, store.get)


def job(*parts: Part, role: str = "user", **kw) -> GenerateJob:
    return GenerateJob("r1", "ming", messages=(ChatMessage(role, tuple(parts)),), **kw)


def decode(pipeline, ids: list[int]) -> str:
    """The tiny WordLevel tokenizer's text without the spaces it puts between tokens."""
    return pipeline.processor.tokenizer.decode(ids).replace(" ", "")


def test_an_image_and_text_become_ids_and_pixel_values(pipeline, store):
    ref = store.ref("image", png_bytes(golden_image()))
    built = pipeline.build(job(Part("text", "what is this?"), Part("image", media=ref)))
    ids = built.ids
    assert ids.count(IMAGE_PATCH) == 100  # 56x56 upsized to 280x280 by the checkpoint's min_pixels
    assert set(built.media.tensors) == {"pixel_values", "image_grid_thw"}
    assert built.media.tensors["image_grid_thw"].tolist() == [[1, 20, 20]]
    assert built.media.digest == ref.key  # the content hash the gateway stored it under
    text = decode(pipeline, ids)
    assert "<role>HUMAN</role>whatis[UNK]<image><imagePatch>" in text and text.endswith(
        "<role>ASSISTANT</role>"
    )


def test_audio_and_video_parts_in_request_order(pipeline, store):
    audio = store.ref("audio", wav_bytes(golden_wave()))
    video = store.ref("video", mp4_bytes(ramp_video(8), fps=4))
    built = pipeline.build(job(Part("audio", media=audio), Part("text", "and"), Part("video", media=video)))
    assert built.ids.count(AUDIO_PATCH) == 38 and built.ids.count(VIDEO_PATCH) > 0
    assert {"audio_feats", "audio_feats_lengths", "audio_placeholder_loc_lens", "pixel_values_videos"} <= set(
        built.media.tensors
    )
    assert built.media.digest == f"{audio.key}|{video.key}"  # kinds in a fixed order: image, audio, video


def test_a_text_only_job_has_no_media(pipeline):
    built = pipeline.build(job(Part("text", "hello")))
    assert built.media is None and IMAGE_PATCH not in built.ids
    raw = pipeline.build(GenerateJob("r", "ming", prompt="hello"))
    assert raw.media is None and raw.ids == pipeline.processor.tokenizer.encode(
        "hello", add_special_tokens=False
    )


def test_a_bad_part_is_named_by_its_request_field(pipeline, store):
    good = store.ref("image", png_bytes(golden_image()))
    corrupt = store.ref("image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(RequestError, match=r"^messages\[1\]\.content\[2\]\.image: "):
        pipeline.build(
            GenerateJob(
                "r",
                "ming",
                messages=(
                    ChatMessage("user", (Part("image", media=good),)),
                    ChatMessage("user", (Part("text", "x"), Part("text", "y"), Part("image", media=corrupt))),
                ),
            )
        )


def test_expired_media_bytes_are_a_clear_error(pipeline):
    gone = MediaRef(kind="image", key="bailing:media:gone", mime_type="image/png", size=10)
    with pytest.raises(
        RequestError, match=r"messages\[0\]\.content\[0\]\.image: the media bytes are no longer"
    ):
        pipeline.build(job(Part("image", media=gone)))


def test_a_transcription_puts_the_asr_instruction_before_the_audio(pipeline, store):
    audio = store.ref("audio", wav_bytes(golden_wave()))
    built = pipeline.build(job(Part("audio", media=audio), task="transcribe"))
    text = decode(pipeline, built.ids)
    asr = decode(
        pipeline, pipeline.processor.tokenizer.encode(MING.transcribe_prompt, add_special_tokens=False)
    )
    assert f"<role>HUMAN</role>{asr}<audio>" in text
    assert built.media.tensors["audio_feats"].shape[-1] == 128
    with pytest.raises(RequestError, match="exactly one audio part"):
        pipeline.build(job(Part("text", "no audio"), task="transcribe"))


def test_prepare_with_the_media_pipeline(pipeline, store):
    from engine.engine import EngineConfig, LLMEngine
    from pipelines import text

    engine = LLMEngine(TINY, "cpu", torch.float32, EngineConfig(num_kv_blocks=32))
    ref = store.ref("image", png_bytes(golden_image()))
    prepared = text.prepare(
        job(Part("image", media=ref), Part("text", "hi")), engine, MING, {}, 8, (), pipeline
    )
    assert prepared.media is not None and prepared.params.max_tokens == 8
    assert prepared.prompt_ids.count(IMAGE_PATCH) == 100
    with pytest.raises(RequestError, match="does not transcribe"):
        text.prepare(job(Part("audio", media=ref), task="transcribe"), engine, MING, {}, 8, (), None)


def test_operator_limits_tighten_the_processor(store):
    from pipelines.media import MediaLimits

    limits = MediaLimits(
        max_image_pixels=1000, max_audio_seconds=1.0, max_video_frames=8, max_video_seconds=30
    )
    strict = MediaPipeline(MING, TINY, store.get, limits)
    assert strict.processor.video_config.max_frames == 8 and strict.processor.video_config.max_seconds == 30
    image = store.ref("image", png_bytes(golden_image()))  # 56 x 56 = 3136 pixels
    with pytest.raises(
        RequestError, match=r"messages\[0\]\.content\[0\]\.image: .*more than the limit of 1,000"
    ):
        strict.build(job(Part("image", media=image)))
    audio = store.ref("audio", wav_bytes(golden_wave()))  # 1.5 s
    with pytest.raises(
        RequestError, match=r"content\[0\]\.audio: is 1\.5 s long, more than the limit of 1 s"
    ):
        strict.build(job(Part("audio", media=audio)))
    with pytest.raises(ValueError, match="exceeds the audio encoder's limit"):
        MediaPipeline(MING, TINY, store.get, MediaLimits(max_audio_seconds=10_000))
