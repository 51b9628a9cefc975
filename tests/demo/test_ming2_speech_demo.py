"""The Ming 2.0 demo's speech stage (`<model_dir>/talker/`, bailing/demo/ming2_speech.py and
ming2_voices.py): each part loads strictly through the project's loaders (talker, its tokenizer,
AudioVAE), the CAM++ stand-in runs with the stated signature (onnxruntime when installed, else onnx's
reference evaluator), the voice presets parse and their wavs read, one sentence synthesises end to
end, the output is seeded, and spec errors name the field."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from bailing.demo.ming2 import Ming2DemoSpec, write_ming2_checkpoint
from bailing.demo.ming2_speech import TALKER_SPECIAL_TOKENS, SpeechDemoSpec, write_speech_parts
from models.ming.speech.talker_config import LATENT_DIM, XVECTOR_DIM
from models.ming.speech.talker_generator import MIN_NEW_TOKENS, TalkerGenerator, TalkerRequest
from models.ming.speech.talker_loading import load_talker, load_talker_tokenizer
from models.ming.speech.talker_prompt import build_prompt, talker_inputs
from models.ming.speech.vae_loading import load_vae
from models.ming.speech.voices import (
    CAMPPLUS_MEL_BINS,
    CAMPPLUS_RATE,
    DEFAULT_VOICE,
    campplus_features,
    left_pad_to_multiple,
    parse_voice_presets,
    prompt_wav_multiple,
    register_voice,
    resample,
    resolve_voice,
)

CPU = torch.device("cpu")
TALKER_FILES = {
    "config.json", "model.safetensors", "campplus.onnx", "llm/config.json", "llm/tokenizer.json",
    "llm/tokenizer_config.json", "llm/special_tokens_map.json", "vae/config.json", "vae/model.safetensors",
    "data/voice_name.json", "data/spks/prompt.wav", "data/spks/narrator.wav",
}  # fmt: skip


@pytest.fixture(scope="module")
def talker_dir(tmp_path_factory):
    return write_ming2_checkpoint(tmp_path_factory.mktemp("ming2s") / "ming2") / "talker"


@pytest.fixture(scope="module")
def talker(talker_dir):
    return load_talker(talker_dir, CPU, torch.float32)


@pytest.fixture(scope="module")
def vae(talker_dir):
    return load_vae(talker_dir / "vae", CPU, torch.float32)


def _presets(talker_dir):
    return parse_voice_presets(json.loads((talker_dir / "data" / "voice_name.json").read_text()))


def _xvector(path, feats: np.ndarray) -> np.ndarray:
    """The speaker encoder's output for `feats` [1, frames, 80]: onnxruntime as the worker runs it,
    or onnx's reference evaluator where onnxruntime is not installed."""
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: feats})[0]
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(str(path)).run(None, {"fbank": feats})[0]


def _read_wav(path) -> tuple[torch.Tensor, int]:
    wav, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    return torch.from_numpy(wav.T.copy()), rate


def test_the_talker_folder_layout(talker_dir):
    files = {str(p.relative_to(talker_dir)) for p in talker_dir.rglob("*") if p.is_file()}
    assert files == TALKER_FILES
    assert sum((talker_dir / f).stat().st_size for f in files) < 4_000_000


def test_the_talker_loads_strictly_with_the_spec_sizes(talker_dir, talker):
    spec = SpeechDemoSpec()
    cfg = talker.config
    assert (cfg.steps, cfg.patch_size, cfg.history_patch_size, cfg.latent_dim) == (10, 4, 32, LATENT_DIM)
    assert (cfg.flow.hidden_size, cfg.aggregator.hidden_size, cfg.llm_hidden_size) == (
        spec.flow_hidden, spec.aggregator_hidden, spec.backbone_hidden,
    )  # fmt: skip
    assert talker.spk_head.weight.shape == (spec.backbone_hidden, XVECTOR_DIM)
    assert talker.stop_head.bias[1] > talker.stop_head.bias[0]  # the demo's stop bias
    bf16 = load_talker(talker_dir, CPU, torch.bfloat16)
    assert bf16.stop_head.weight.dtype == torch.bfloat16


def test_the_tokenizer_has_the_prompt_tokens_as_single_tokens(talker_dir, talker):
    tok = load_talker_tokenizer(talker_dir)
    ids = [tok.convert_tokens_to_ids(t) for t in TALKER_SPECIAL_TOKENS]
    assert all(len(tok.encode(t)) == 1 for t in TALKER_SPECIAL_TOKENS)
    assert max(ids) < talker.model.embed_tokens.weight.shape[0]
    llm = json.loads((talker_dir / "llm" / "config.json").read_text())
    assert llm["eos_token_id"] == tok.eos_token_id == ids[0]
    prompt = build_prompt(tok, "Good day.", num_speakers=1, prompt_text="Hi.", num_prompt_patches=2)
    assert len(prompt.speaker_slots) == 1 and len(prompt.patch_slots) == 2
    assert tok.decode(prompt.input_ids).endswith("<|im_start|>assistant\n<audio><audioPatch><audioPatch>")


def test_the_vae_loads_strictly_and_decodes_audible_noise(vae):
    assert (vae.sample_rate, vae.hop, vae.patch_size, vae.config.latent_dim) == (16000, 320, 4, LATENT_DIM)
    wav = vae.decode_whole(torch.randn(1, 8, LATENT_DIM, generator=torch.Generator().manual_seed(0)))
    assert wav.shape == (1, 8 * vae.samples_per_latent) and bool(wav.isfinite().all())
    assert 0.01 < float(wav.pow(2).mean().sqrt()) < 0.5 and float(wav.abs().max()) < 1.0


def test_the_speaker_encoder_signature_and_output(talker_dir):
    path = talker_dir / "campplus.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim] == [
        "batch", "frames", CAMPPLUS_MEL_BINS,
    ]  # fmt: skip
    assert [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim] == ["batch", XVECTOR_DIM]
    xvectors = []
    for preset in _presets(talker_dir).values():
        wav, rate = _read_wav(talker_dir / preset.prompt_wav)
        feats = campplus_features(resample(wav, rate, CAMPPLUS_RATE)).numpy()  # (1, frames, 80)
        xvectors.append(_xvector(path, feats))
        assert xvectors[-1].shape == (1, XVECTOR_DIM) and np.isfinite(xvectors[-1]).all()
    assert not np.allclose(*xvectors, atol=1e-3)  # the voices are told apart


def test_the_voice_presets_and_their_wavs(talker_dir, vae):
    presets = _presets(talker_dir)
    assert list(presets) == [DEFAULT_VOICE, "narrator"]
    assert presets[DEFAULT_VOICE].prompt_text == "感谢你的认可。"  # upstream's DB30 transcript
    assert presets[DEFAULT_VOICE].prompt_wav == "data/spks/prompt.wav"
    for preset in presets.values():
        info = sf.info(str(talker_dir / preset.prompt_wav))
        assert (info.samplerate, info.channels, info.subtype) == (vae.sample_rate, 1, "PCM_16")
        assert 1.0 <= info.duration <= 3.0
        wav, _ = _read_wav(talker_dir / preset.prompt_wav)
        assert float(wav.pow(2).mean().sqrt()) > 0.05 and float(wav.abs().max()) <= 0.5 + 1e-4


def test_one_sentence_end_to_end(talker_dir, talker, vae):
    """Preset -> CAM++ x-vector + VAE prompt latents -> registered voice -> prompt -> AR talker ->
    VAE decode: the demo stops at its first allowed step, so every sentence gives the same length."""
    tok = load_talker_tokenizer(talker_dir)
    source = resolve_voice(_presets(talker_dir), DEFAULT_VOICE)
    wav, rate = _read_wav(talker_dir / source.prompt_wavs[0])
    feats = campplus_features(resample(wav, rate, CAMPPLUS_RATE)).numpy()
    xvector = torch.from_numpy(_xvector(talker_dir / "campplus.onnx", feats))
    multiple = prompt_wav_multiple(vae.hop, vae.patch_size, talker.config.patch_size)
    speech = left_pad_to_multiple(resample(wav, rate, vae.sample_rate), multiple)
    latents = vae.encode_latent(speech, torch.Generator().manual_seed(0))[0]  # (T, C)
    voice = register_voice(talker, latents, xvector, source.prompt_text)
    inputs = talker_inputs(
        talker, tok, "Hello there, this is the demo talker.", speakers=voice.speakers,
        prompt_text=voice.prompt_text, prompt_latents=voice.prompt_latents,
        prompt_patches=voice.prompt_patches,
    )  # fmt: skip
    assert len(inputs.prompt.patch_slots) == latents.shape[0] // talker.config.patch_size
    request = TalkerRequest(inputs.inputs_embeds, inputs.history, generator=torch.Generator().manual_seed(1))
    generator = TalkerGenerator(talker)
    batch = generator.start([request])
    while not batch.done:
        generator.step(batch)
    assert batch.stop_reasons == ["stop"] and len(batch.latents[0]) == MIN_NEW_TOKENS + 2
    audio = vae.decode_whole(torch.cat(batch.latents[0])[None])
    assert audio.shape[-1] == (MIN_NEW_TOKENS + 2) * talker.config.patch_size * vae.samples_per_latent
    assert bool(audio.isfinite().all()) and float(audio.pow(2).mean().sqrt()) > 0.01


def test_seeded_speech_parts(tmp_path):
    spec = SpeechDemoSpec()
    a, b = (write_speech_parts(tmp_path / n, spec, seed=5) for n in ("a", "b"))
    other = write_speech_parts(tmp_path / "c", spec, seed=6)
    for name in sorted(TALKER_FILES):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for name in ("model.safetensors", "vae/model.safetensors", "campplus.onnx"):
        assert (a / name).read_bytes() != (other / name).read_bytes(), name
    assert Ming2DemoSpec().speech == spec


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"flow_heads": 5}, "flow_heads"),
        ({"backbone_kv_heads": 3}, "backbone_kv_heads"),
        ({"history_patch_size": 2}, "history_patch_size"),
        ({"vae_encoder_layers": 2}, "vae_encoder_layers"),
        ({"vae_hop": 0}, "vae_hop"),
        ({"steps": True}, "steps"),
    ],
)
def test_bad_spec_names_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        SpeechDemoSpec(**change)
