"""The talker's prompt and voices: the golden token layout rebuilt from text with the checkpoint's
tokenizer (checked by ids and by decoding), its slots, the BGM / instruction / multi-speaker variants,
the history initialisation, and registering a voice from prompt latents + x-vectors."""

from __future__ import annotations

import pytest
import torch

from engine.errors import TokenizerError
from models.ming.speech.talker_loading import load_talker, load_talker_tokenizer
from models.ming.speech.talker_prompt import (
    MUSIC_PROMPT,
    SPEECH_PROMPT,
    build_prompt,
    embed_prompt,
    initial_history,
    talker_inputs,
)
from models.ming.speech.voices import (
    DEFAULT_VOICE,
    VoiceSource,
    campplus_features,
    left_pad_to_multiple,
    parse_voice_presets,
    prompt_wav_multiple,
    register_voice,
    resolve_voice,
)
from tests.models.ming.speech_golden import TALKER, available, expected, maxdiff, tensors

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
CPU = torch.device("cpu")
# upstream data/voice_name.json at 2a0c02a
UPSTREAM_VOICES = {
    "DB30": {"prompt_text": "感谢你的认可。", "prompt_wav_path": "data/spks/prompt.wav"},
    "lingguang": {
        "prompt_text": "诶，你今天有空吗？我们能不能聊聊这件事啊？",
        "prompt_wav_path": "data/lg/prompt_15014.wav",
    },
}


@pytest.fixture(scope="module")
def talker():
    return load_talker(TALKER, CPU, torch.float32)


@pytest.fixture(scope="module")
def tokenizer():
    return load_talker_tokenizer(TALKER)


@pytest.fixture(scope="module")
def voice(talker):
    g = tensors()
    return register_voice(talker, g["inputs.prompt_wav_lat"][0], g["inputs.xvector"], "Hi.")


def test_golden_layout_from_text(tokenizer):
    e = expected()["gen_det"]
    prompt = build_prompt(tokenizer, "Good day.", num_speakers=1, prompt_text="Hi.", num_prompt_patches=2)
    assert list(prompt.input_ids) == e["input_ids"]
    assert prompt.speaker_slots == (e["spk_slot_index"],)
    assert prompt.patch_slots == tuple(e["prompt_patch_slots"])
    assert prompt.input_ids[e["audio_token_index"]] == tokenizer.encode("<audio>")[0]
    assert tokenizer.decode(list(prompt.input_ids)) == e["decoded_prompt"]


def test_register_voice_matches_upstream(voice):
    g = tensors()
    assert maxdiff(voice.speakers, g["prompt.spk_emb"]) < 1e-5
    assert maxdiff(voice.prompt_patches[None], g["prompt.prompt_wav_emb"]) < 1e-5
    assert voice.prompt_latents.shape == (8, 64)


def test_talker_inputs_match_golden_prefill(talker, tokenizer, voice):
    g = tensors()
    with torch.no_grad():
        inputs = talker_inputs(
            talker,
            tokenizer,
            "Good day.",
            speakers=voice.speakers,
            prompt_text=voice.prompt_text,
            prompt_latents=voice.prompt_latents,
            prompt_patches=voice.prompt_patches,
        )
    assert maxdiff(inputs.inputs_embeds[None], g["gen_det.inputs_embeds"]) < 1e-5
    assert torch.equal(inputs.history[None], g["gen_det.step0.his_lat_in"])


def test_bgm_description_drops_text_input(tokenizer):
    text = " Genre: folk. Mood: happy. Instrument: accordion. Theme: travel. Duration: 60s."
    decoded = tokenizer.decode(list(build_prompt(tokenizer, text, prompt=MUSIC_PROMPT).input_ids))
    assert " Text input:\n" not in decoded
    assert decoded.endswith(f"user\n{MUSIC_PROMPT}{text}<|im_end|>\n<|im_start|>assistant\n<audio>")
    partial = tokenizer.decode(list(build_prompt(tokenizer, " Genre: folk. Mood: sad.").input_ids))
    assert " Text input:\n Genre: folk." in partial


def test_instruction_and_two_speakers(tokenizer):
    prompt = build_prompt(tokenizer, "Hello.", num_speakers=2, instruction='{"emotion": "happy"}')
    decoded = tokenizer.decode(list(prompt.input_ids))
    speakers = "".join(f"  speaker_{i}:<|vision_start|><|vision_pad|><|vision_end|>\n" for i in (1, 2))
    assert f"{SPEECH_PROMPT}{speakers} Text input:\nHello.<|im_end|>" in decoded
    assert decoded.endswith('<|im_start|>assistant\n{"emotion": "happy"}<|im_end|><audio>')
    pad = tokenizer.encode("<|vision_pad|>")[0]
    assert [prompt.input_ids[s] for s in prompt.speaker_slots] == [pad, pad]
    assert prompt.patch_slots == ()


def test_prompt_text_needs_prompt_patches(talker, tokenizer, voice):
    """Upstream's zero-shot condition: no patches -> no prompt text; the history still starts from
    the prompt latents (upstream passes them to generate() regardless)."""
    with torch.no_grad():
        inputs = talker_inputs(
            talker, tokenizer, "Good day.", prompt_text="Hi.", prompt_latents=voice.prompt_latents
        )
    assert "Hi." not in tokenizer.decode(list(inputs.prompt.input_ids))
    assert torch.equal(inputs.history[-8:], voice.prompt_latents) and inputs.history[:-8].abs().max() == 0


def test_slot_rows_must_match(talker, tokenizer):
    prompt = build_prompt(tokenizer, "x", num_speakers=1)
    with pytest.raises(ValueError, match="speakers"):
        embed_prompt(talker, prompt, torch.zeros(2, 64))
    with pytest.raises(ValueError, match="prompt_patches"):
        embed_prompt(talker, prompt, torch.zeros(1, 64), torch.zeros(1, 64))


def test_special_tokens_must_be_single(talker):
    class Split:
        def encode(self, text):
            return [ord(c) for c in text]

    with pytest.raises(TokenizerError, match="<audio>"):
        build_prompt(Split(), "x")


def test_initial_history_alignment():
    lat = torch.arange(40 * 2, dtype=torch.float32).reshape(40, 2)
    long = initial_history(lat, 32, 2, CPU, torch.float32)
    assert torch.equal(long, lat[-32:])
    short = initial_history(lat[:5], 32, 2, CPU, torch.float32)
    assert torch.equal(short[-5:], lat[:5]) and short[:-5].abs().max() == 0
    assert initial_history(None, 32, 2, CPU, torch.float32).abs().max() == 0


def test_voice_presets_resolve():
    presets = parse_voice_presets(UPSTREAM_VOICES)
    assert resolve_voice(presets, DEFAULT_VOICE) == VoiceSource(("data/spks/prompt.wav",), "感谢你的认可。")
    assert resolve_voice(presets, None, "hi", ("a.wav", "b.wav")) == VoiceSource(("a.wav", "b.wav"), "hi")
    assert resolve_voice(presets, None) is None
    with pytest.raises(ValueError, match="not both"):
        resolve_voice(presets, "DB30", prompt_wavs=("a.wav",))
    with pytest.raises(ValueError, match="unknown voice 'nobody'"):
        resolve_voice(presets, "nobody")
    with pytest.raises(ValueError, match="prompt_text"):
        resolve_voice(presets, None, "hi")
    with pytest.raises(ValueError, match="'bad'"):
        parse_voice_presets({"bad": {"prompt_text": "x"}})


def test_prompt_wav_padding_and_features():
    multiple = prompt_wav_multiple(vae_hop=320, vae_patch=4, talker_patch=4)
    assert multiple == 5120 and prompt_wav_multiple(320, -1, 4) == 1280
    wav = torch.ones(1, 6000)
    padded = left_pad_to_multiple(wav, multiple)
    assert padded.shape == (1, 10240) and padded[0, :4240].abs().max() == 0 and padded[0, 4240:].min() == 1
    assert left_pad_to_multiple(padded, multiple) is padded
    feats = campplus_features(torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1)
    assert feats.shape == (1, 98, 80)
    assert feats.mean(dim=1).abs().max() < 1e-4


def test_register_voice_checks_shapes(talker):
    with pytest.raises(ValueError, match="multiple of 4"):
        register_voice(talker, torch.zeros(6, 64), torch.zeros(1, 192), None)
    with pytest.raises(ValueError, match="xvectors"):
        register_voice(talker, torch.zeros(8, 64), torch.zeros(1, 80), None)
