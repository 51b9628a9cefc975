"""Bad inputs raise MediaError (a RequestError, so INVALID_ARGUMENT) whose message names the part."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.errors import RequestError
from models.ming.processing import MediaError, MingProcessor
from tests.models.ming.processing_media import (
    TINY,
    golden_image,
    mp4_bytes,
    png_bytes,
    png_header_only,
    ramp_video,
    require_golden,
    wav_bytes,
)


@pytest.fixture(scope="module")
def processor() -> MingProcessor:
    require_golden()
    return MingProcessor.from_pretrained(TINY, audio={"max_seconds": 5.0}, video={"max_seconds": 20.0})


GOOD_PNG = png_bytes(golden_image())
GOOD_WAV = wav_bytes(np.full(8000, 0.1, np.float32))


def _fails(processor, match, prompt="<IMAGE>", **media):
    with pytest.raises(MediaError, match=match) as info:
        processor.process(prompt, **media)
    assert isinstance(info.value, RequestError) and isinstance(info.value, ValueError)
    return str(info.value)


# ---- images ---------------------------------------------------------------------------------------
def test_corrupt_image_bytes(processor):
    _fails(processor, r"^image 1: not a decodable image", images=[b"definitely not an image"])


def test_truncated_png(processor):
    _fails(processor, r"^image 1: cannot be decoded", images=[GOOD_PNG[: len(GOOD_PNG) // 2]])


def test_the_second_image_is_named(processor):
    _fails(processor, r"^image 2: ", prompt="<IMAGE><IMAGE>", images=[GOOD_PNG, b"\x89PNG\r\n\x1a\nrubbish"])


def test_one_pixel_image(processor):
    tiny = png_bytes(np.zeros((1, 1, 3), np.uint8))
    _fails(processor, r"^image 1: is 1x1 pixels; each side must be at least 14 pixels", images=[tiny])


def test_sliver_image(processor):
    sliver = png_bytes(np.zeros((14, 14 * 201, 3), np.uint8))
    _fails(processor, r"^image 1: .*aspect ratio above 200", images=[sliver])


@pytest.mark.parametrize(("width", "height"), [(10001, 10000), (20000, 20000)])
def test_decompression_bomb_header_is_refused_before_decoding(processor, width, height):
    header = png_header_only(width, height)
    assert len(header) < 100  # claims 100+ megapixels in a few dozen bytes
    start = time.perf_counter()
    message = _fails(
        processor, r"^image 1: (is \d+x\d+ = [\d,]+ pixels, more|has more) than", images=[header]
    )
    assert time.perf_counter() - start < 1.0  # nothing was decoded or allocated
    assert "the limit" in message and "100,000,000 pixels" in message


def test_empty_image(processor):
    _fails(processor, r"^image 1: is empty", images=[b""])


def test_video_bytes_sent_as_an_image(processor):
    _fails(processor, r"^image 1: not a decodable image", images=[mp4_bytes(ramp_video(4), 4)])


# ---- audio ----------------------------------------------------------------------------------------
def test_zero_second_wav(processor):
    empty = wav_bytes(np.zeros(0, np.float32))
    _fails(processor, r"^audio 1: is 0\.000 s long", prompt="<AUDIO>", audios=[empty])


def test_zero_second_wav_at_another_rate(processor):
    """Found by `make fuzz`: 0 samples at 44.1 kHz reached torchaudio's resampler, which cannot reshape
    an empty wave (RuntimeError: the worker answered INTERNAL)."""
    empty = wav_bytes(np.zeros(0, np.float32), rate=44100)
    _fails(processor, r"^audio 1: is 0\.000 s long", prompt="<AUDIO>", audios=[empty])


def test_empty_audio_bytes(processor):
    _fails(processor, r"^audio 1: is empty", prompt="<AUDIO>", audios=[b""])


def test_image_sent_as_audio(processor):
    _fails(
        processor,
        r"^audio 1: (not a decodable audio|has no audio stream)",
        prompt="<AUDIO>",
        audios=[GOOD_PNG],
    )


def test_garbage_audio(processor):
    _fails(
        processor,
        r"^audio 2: not a decodable audio",
        prompt="<AUDIO><AUDIO>",
        audios=[GOOD_WAV, b"RIFF" + b"\0" * 40],
    )


def test_audio_over_the_length_limit(processor):
    long = wav_bytes(np.zeros(16000 * 6, np.float32))
    _fails(
        processor, r"^audio 1: is 6\.0 s long, more than the limit of 5 s", prompt="<AUDIO>", audios=[long]
    )


def test_non_finite_audio(processor):
    bad = np.full(8000, 0.1, np.float32)
    bad[10] = np.nan
    _fails(processor, r"^audio 1: holds NaN", prompt="<AUDIO>", audios=[wav_bytes(bad)])


# ---- video ----------------------------------------------------------------------------------------
def test_wav_sent_as_a_video(processor):
    _fails(
        processor,
        r"^video 1: (not a decodable video|has no video stream)",
        prompt="<VIDEO>",
        videos=[GOOD_WAV],
    )


def test_garbage_video(processor):
    _fails(
        processor,
        r"^video 1: not a decodable video",
        prompt="<VIDEO>",
        videos=[b"\0\0\0\x18ftypmp42" + b"\0" * 64],
    )


def test_truncated_mp4_whose_stream_has_no_codec_parameters(processor):
    """Found by `make fuzz`: an MP4 cut inside its sample table opens with a video stream whose
    codec_context is None (AttributeError: the worker answered INTERNAL)."""
    cut = mp4_bytes(ramp_video(4), 4)[:1150]
    expect = r"^video 1: has a video stream without codec parameters"
    _fails(processor, expect, prompt="<VIDEO>", videos=[cut])


def test_video_with_too_few_frames(processor):
    _fails(
        processor,
        r"^video 1: has 3 frames; at least 4",
        prompt="<VIDEO>",
        videos=[mp4_bytes(ramp_video(3), 4)],
    )


def test_video_over_the_length_limit(processor):
    _fails(processor, r"^video 1: is 25\.0 s long", prompt="<VIDEO>", videos=[mp4_bytes(ramp_video(25), 1)])


def test_video_over_the_byte_limit():
    require_golden()
    small = MingProcessor.from_pretrained(TINY, video={"max_bytes": 100})
    with pytest.raises(MediaError, match=r"^video 1: is \d+ bytes, more than the limit of 100"):
        small.process("<VIDEO>", videos=[mp4_bytes(ramp_video(4), 4)])


def test_video_over_the_frame_limit():
    require_golden()
    small = MingProcessor.from_pretrained(TINY, video={"max_source_frames": 10})
    with pytest.raises(MediaError, match=r"^video 1: has more than 10 frames"):
        small.process("<VIDEO>", videos=[mp4_bytes(ramp_video(12), 4)])


# ---- prompt ---------------------------------------------------------------------------------------
def test_placeholder_count_must_match(processor):
    _fails(processor, r"1 <IMAGE> placeholder\(s\) but the request sent 0 image", images=[])
    _fails(
        processor,
        r"0 <VIDEO> placeholder\(s\) but the request sent 1 video",
        prompt="hi",
        videos=[mp4_bytes(ramp_video(4), 4)],
    )


def test_text_must_not_spell_media_tokens(processor):
    _fails(processor, r"<imagePatch> token", prompt="<IMAGE><imagePatch>", images=[GOOD_PNG])


def test_messages_and_media_must_agree(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what"}]}]
    _fails(processor, r"1 image item\(s\) but the request sent 0", prompt=messages)


def test_last_message_must_be_human(processor):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    _fails(processor, r"last message must be HUMAN", prompt=messages)


def test_unknown_role(processor):
    _fails(processor, r"message 1: role must be", prompt=[{"role": "tool", "content": "x"}])


def test_system_message_sets_the_persona(processor):
    text = processor.prompt_text(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        0,
        0,
        0,
        thinking=True,
    )
    assert text == (
        "<role>SYSTEM</role>Be brief.\n\ndetailed thinking on<|role_end|>"
        "<role>HUMAN</role>hello<|role_end|><role>ASSISTANT</role>"
    )


def test_placeholder_mismatch_fails_before_any_decoding(processor):
    bomb = png_header_only(20000, 20000)  # would be refused as too large if it were looked at
    _fails(
        processor, r"has 0 <IMAGE> placeholder\(s\) but the request sent 1 image", prompt="hi", images=[bomb]
    )
