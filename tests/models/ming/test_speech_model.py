"""SpeechModel and the CAM++ speaker encoder on a tiny speaking checkpoint (the golden talker + VAE, a
tiny CAM++ ONNX graph written with the `onnx` package): presets registered once at load, the default
voice rule, a client's clip registered as upstream's `register_prompt_wav` does, and loud failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError
from models.ming.speech.speaker_encoder import SpeakerEncoder
from models.ming.speech.speech_model import SpeechModel
from models.ming.speech.voices import campplus_features, resample
from tests.models.ming.speech_checkpoint import PRESETS, tone, write_campplus, write_speech_checkpoint
from tests.models.ming.speech_golden import available

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = write_speech_checkpoint(tmp_path_factory.mktemp("speaking"))
    return SpeechModel.load(root, CPU, torch.float32)


def test_presets_are_registered_at_load(model):
    assert model.voice_names == ("DB30", "bright") and model.default_voice == "DB30"
    for name in PRESETS:
        voice = model.voices[name]
        assert voice.prompt_text == PRESETS[name]["prompt_text"]
        assert voice.speakers.shape == (1, 64)  # one CAM++ x-vector through spk_head
        assert voice.prompt_latents.shape[0] % 4 == 0
        assert voice.prompt_patches.shape == (voice.prompt_latents.shape[0] // 4, 64)
    # 1.2 s at 16 kHz and at 24 kHz (resampled to the VAE's 16 kHz): the same padded length
    assert (
        model.voices["DB30"].prompt_latents.shape == model.voices["bright"].prompt_latents.shape == (152, 64)
    )


def test_facts(model):
    assert model.sample_rate == 16000
    assert model.samples_per_patch == 32 * 4 * 4  # hop x VAE patch x talker patch
    assert model.seconds_per_patch == pytest.approx(0.032)


def test_a_clip_gives_the_same_voice_every_time(model):
    wav = torch.from_numpy(tone(1.0, 22050, 300.0, seed=9))[None]
    a = model.voice_from_clip(wav, 22050, "Hello.")
    b = model.voice_from_clip(wav, 22050, "Hello.")
    assert torch.equal(a.prompt_latents, b.prompt_latents) and torch.equal(a.speakers, b.speakers)
    other = model.voice_from_clip(torch.from_numpy(tone(1.0, 22050, 500.0, seed=3))[None], 22050, None)
    assert not torch.equal(other.speakers, a.speakers) and other.prompt_text is None


def test_clip_prompt_has_speaker_and_patch_slots(model):
    voice = model.voices["DB30"]
    inputs = model.talker_inputs("Good day.", voice)
    prompt = inputs.prompt
    assert len(prompt.speaker_slots) == 1 and len(prompt.patch_slots) == voice.prompt_patches.shape[0]
    assert torch.equal(inputs.inputs_embeds[prompt.speaker_slots[0]], voice.speakers[0])
    bare = model.talker_inputs("Good day.", None)
    assert not bare.prompt.speaker_slots and not bare.prompt.patch_slots and not bare.history.any()


def test_speaker_encoder_reads_the_input_name_and_matches_the_graph(tmp_path):
    path = tmp_path / "campplus.onnx"
    write_campplus(path)
    encoder = SpeakerEncoder.load(path)
    assert encoder.input_name == "feats"
    wav = torch.from_numpy(tone(0.8, 16000))[None]
    xvector = encoder(wav)
    assert xvector.shape == (1, 192) and xvector.dtype == torch.float32
    import onnx
    from onnx import numpy_helper

    weight = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    expected = (campplus_features(wav)[0].numpy() @ weight).mean(axis=0)
    assert np.allclose(xvector[0].numpy(), expected, atol=1e-4)


def test_speaker_encoder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        SpeakerEncoder.load(tmp_path / "campplus.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="not a usable ONNX model"):
        SpeakerEncoder.load(tmp_path / "bad.onnx")


def test_no_talker_folder_means_no_speech(tmp_path):
    assert SpeechModel.load(tmp_path, CPU, torch.float32) is None


def test_default_voice_rules(tmp_path):
    others = {"zed": PRESETS["bright"], "amy": PRESETS["DB30"]}
    model = SpeechModel.load(write_speech_checkpoint(tmp_path / "a", presets=others), CPU, torch.float32)
    assert model.default_voice == "zed" and model.voice_names == ("zed", "amy")  # the first preset
    bare = SpeechModel.load(write_speech_checkpoint(tmp_path / "b", presets=None), CPU, torch.float32)
    assert bare.default_voice is None and bare.voice_names == ()


def test_without_campplus_voices_have_no_speaker_slot(tmp_path):
    model = SpeechModel.load(write_speech_checkpoint(tmp_path, campplus=False), CPU, torch.float32)
    voice = model.voices["DB30"]
    assert voice.speakers.shape == (0, 64)
    assert not model.talker_inputs("Hi.", voice).prompt.speaker_slots


def test_bad_presets_are_checkpoint_errors(tmp_path):
    root = write_speech_checkpoint(tmp_path / "a")
    (root / "talker" / PRESETS["bright"]["prompt_wav_path"]).unlink()
    with pytest.raises(CheckpointError, match=r"voice preset 'bright': cannot read"):
        SpeechModel.load(root, CPU, torch.float32)
    root = write_speech_checkpoint(tmp_path / "b", presets=None)
    (root / "talker" / "data").mkdir()
    (root / "talker" / "data" / "voice_name.json").write_text(json.dumps({"x": {"prompt_text": 1}}))
    with pytest.raises(CheckpointError, match="voice_name.json"):
        SpeechModel.load(root, CPU, torch.float32)


def test_resample_is_identity_at_the_same_rate():
    wav = torch.randn(1, 100)
    assert resample(wav, 16000, 16000) is wav
