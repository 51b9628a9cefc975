"""MingProcessor against the golden set made by the official Ming code (shared/golden/ming-tiny).

The raw image/audio are rebuilt from the README's formulas and encoded to bytes (PNG, float WAV),
then run through our processor on the exact prompt strings of expected.json.
"""

from __future__ import annotations

import pytest
import torch

from models.ming.processing import MingProcessor
from tests.models.ming.processing_media import (
    TINY,
    golden_cases,
    golden_image,
    golden_tensors,
    golden_wave,
    golden_windows_image,
    png_bytes,
    require_golden,
    wav_bytes,
)


@pytest.fixture(scope="module")
def processor() -> MingProcessor:
    require_golden()
    # the golden run lowered the image processor's min_pixels to 56*56 (README, "Processor")
    return MingProcessor.from_pretrained(TINY, image={"min_pixels": 56 * 56})


def _check_ids(case: str, inputs) -> None:
    gold = golden_tensors()
    assert inputs.input_ids.tolist() == gold[f"{case}.input_ids"].tolist()
    assert inputs.input_ids.tolist()[0] == golden_cases()[case]["input_ids"]
    assert torch.equal(inputs.attention_mask, gold[f"{case}.attention_mask"])


def test_text_case(processor):
    inputs = processor.process(golden_cases()["text"]["prompt_text"])
    _check_ids("text", inputs)
    assert inputs.pixel_values is None and inputs.audio_feats is None
    assert set(inputs.tensors()) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize(
    ("case", "pixels", "grid", "tokens"),
    [("image", golden_image, [1, 4, 4], 4), ("image_windows", golden_windows_image, [1, 8, 12], 24)],
)
def test_image_cases(processor, case, pixels, grid, tokens):
    gold = golden_tensors()
    inputs = processor.process(golden_cases()[case]["prompt_text"], images=[png_bytes(pixels())])
    _check_ids(case, inputs)
    assert inputs.image_grid_thw.tolist() == [grid] == gold[f"{case}.image_grid_thw"].tolist()
    assert inputs.pixel_values.dtype == torch.float32
    assert inputs.pixel_values.shape == gold[f"{case}.pixel_values"].shape
    assert torch.equal(inputs.pixel_values, gold[f"{case}.pixel_values"])  # bit-exact
    ids = inputs.input_ids[0].tolist()
    assert ids.count(processor.tokens.image_patch) == tokens
    start = ids.index(processor.tokens.image_start)
    assert ids[start + 1 + tokens] == processor.tokens.image_end
    assert set(inputs.tensors()) == {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"}


def test_audio_case(processor):
    gold = golden_tensors()
    inputs = processor.process(golden_cases()["audio"]["prompt_text"], audios=[wav_bytes(golden_wave())])
    _check_ids("audio", inputs)
    assert inputs.audio_feats.shape == gold["audio.audio_feats"].shape == (1, 150, 128)
    diff = (inputs.audio_feats - gold["audio.audio_feats"]).abs().max().item()
    assert diff < 1e-4, diff
    assert inputs.audio_feats_lengths.tolist() == gold["audio.audio_feats_lengths"].tolist() == [[150]]
    loc_lens = gold["audio.audio_placeholder_loc_lens"].tolist()
    assert inputs.audio_placeholder_loc_lens.tolist() == loc_lens == [[[14, 38]]]
    ids = inputs.input_ids[0].tolist()
    assert ids[13] == processor.tokens.audio_start and ids[14 + 38] == processor.tokens.audio_end
    assert ids[14 : 14 + 38] == [processor.tokens.audio_patch] * 38


def test_special_ids_come_from_the_tokenizer(processor):
    t = processor.tokens  # tiny ids = real Ling-2.0 ids - 156160 (README)
    real = {"image_patch": 157157, "image_start": 157158, "image_end": 157159, "video_start": 157160}
    real |= {"video_end": 157161, "audio_patch": 157168, "audio_start": 157169, "audio_end": 157170}
    real |= {"video_patch": 157175, "eos_id": 156895}
    assert {k: getattr(t, k) + 156160 for k in real} == real
    assert t.eos == "<|role_end|>"


@pytest.mark.parametrize("case", ["text", "image", "audio", "image_windows"])
def test_messages_render_the_golden_prompts(processor, case):
    texts = {
        "text": [{"type": "text", "text": "hello world what is a cat"}],
        "image": [{"type": "image"}, {"type": "text", "text": "describe this image"}],
        "audio": [{"type": "audio"}, {"type": "text", "text": "please transcribe the audio"}],
        "image_windows": [{"type": "image"}, {"type": "text", "text": "what is in this image"}],
    }
    counts = {"image": 1 if "image" in case else 0, "audio": 1 if case == "audio" else 0, "video": 0}
    text = processor.prompt_text(
        [{"role": "HUMAN", "content": texts[case]}], counts["image"], counts["audio"], 0
    )
    assert text == golden_cases()[case]["prompt_text"]


def test_messages_image_end_to_end(processor):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this image"}]}
    ]
    inputs = processor.process(messages, images=[png_bytes(golden_image())])
    _check_ids("image", inputs)


def test_preprocessor_config_is_read(tmp_path):
    import json
    import shutil

    from models.ming.processing import configs_from_folder

    require_golden()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TINY / name, tmp_path / name)
    pre = {
        "min_pixels": 3136,
        "max_pixels": 802816,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    pre["whisper_frontend_args"] = {"n_mels": 128}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    image, audio, video = configs_from_folder(tmp_path)
    assert (image.min_pixels, image.max_pixels, image.image_mean) == (3136, 802816, (0.5, 0.5, 0.5))
    assert (image.patch_size, image.merge_size, image.temporal_patch_size) == (14, 2, 2)
    assert audio.n_mels == 128 and audio.max_seconds == 300.0  # 2·n_ctx frames at 100 per second
    assert (video.factor, video.frame_factor) == (28, 2)
    processor = MingProcessor.from_pretrained(tmp_path)
    inputs = processor.process("<IMAGE>", images=[png_bytes(golden_image())])
    assert inputs.image_grid_thw.tolist() == [[1, 4, 4]]


def test_messages_with_every_modality(processor):
    from tests.models.ming.processing_media import mp4_bytes, ramp_video

    messages = [
        {"role": "HUMAN", "content": "hello"},
        {"role": "ASSISTANT", "content": "hi"},
        {
            "role": "HUMAN",
            "content": [
                {"type": "video"},
                {"type": "image"},
                {"type": "audio"},
                {"type": "text", "text": "what"},
            ],
        },
    ]
    inputs = processor.process(
        messages,
        images=[png_bytes(golden_image())],
        audios=[wav_bytes(golden_wave())],
        videos=[mp4_bytes(ramp_video(8), 4)],
    )
    assert inputs.prompt_text.count("<role>") == 5 and inputs.prompt_text.endswith("<role>ASSISTANT</role>")
    assert "<VIDEO><IMAGE><AUDIO>what<|role_end|>" in inputs.prompt_text
    ids = inputs.input_ids[0].tolist()
    t = processor.tokens
    assert ids.index(t.video_start) < ids.index(t.image_start) < ids.index(t.audio_start)
    assert inputs.audio_placeholder_loc_lens.tolist() == [[[ids.index(t.audio_start) + 1, 38]]]
    assert inputs.video_grid_thw.tolist() == [[4, 20, 28]]  # 8 frames; 48x64 up-sized to 280x392
