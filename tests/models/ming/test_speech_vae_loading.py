"""Loading the golden `talker/vae/` folders strictly: every checkpoint key (encoder included, and the ISTFT
window buffer) maps to AudioVAE and loads bit-equal; a missing, unexpected or mis-shaped tensor names
itself; bad config values name the field."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Model

from engine.errors import CheckpointError
from models.ming.speech.vae import AudioVAE
from models.ming.speech.vae_config import AudioVAEConfig
from models.ming.speech.vae_loading import read_vae_config
from tests.models.ming.speech_golden import VAE, VAE_SLIDING, available

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
CPU = torch.device("cpu")
N_KEYS = 139  # 31 decoder + 108 encoder (two 4-layer Qwen2 backbones, fc1/2/3, norm, cls)


@pytest.fixture()
def vae_copy(tmp_path):
    dst = tmp_path / "vae"
    shutil.copytree(VAE, dst)
    for path in dst.iterdir():
        path.chmod(0o644)
    return dst


def edit_weights(folder, drop=(), add=None, reshape=None):
    path = folder / "model.safetensors"
    state = load_file(path)
    for key in drop:
        del state[key]
    state.update(add or {})
    for key, shape in (reshape or {}).items():
        state[key] = torch.zeros(shape)
    save_file(state, path)


def golden_config() -> dict:
    return json.loads((VAE / "config.json").read_text())


@pytest.mark.parametrize("folder", [VAE, VAE_SLIDING], ids=["full", "sliding"])
def test_all_keys_load_bit_equal(folder):
    vae = AudioVAE.load(folder, CPU, torch.float32)
    state = vae.state_dict()
    stored = load_file(folder / "model.safetensors")
    assert sorted(state) == sorted(stored) and len(stored) == N_KEYS
    for key, value in stored.items():
        assert torch.equal(state[key], value), key
    assert not vae.training
    assert isinstance(vae.decoder.decoder, Qwen2Model) and isinstance(vae.encoder.aggregator, Qwen2Model)


def test_geometry_of_the_golden():
    vae = AudioVAE.load(VAE, CPU, torch.float32)
    assert (vae.sample_rate, vae.hop, vae.patch_size, vae.samples_per_latent) == (16000, 32, 4, 128)
    assert vae.decoder.head.istft.n_fft == 128 and vae.decoder.head.out.out_features == 130
    assert torch.equal(vae.decoder.head.istft.window, torch.hann_window(128))  # the file's buffer
    assert vae.decoder.backbone_config.layer_types == ["full_attention"] * 2
    assert len(vae.encoder.aggregator.layers) == 4


def test_sliding_window_variant_reads_its_window():
    vae = AudioVAE.load(VAE_SLIDING, CPU, torch.float32)
    assert vae.decoder.backbone_config.sliding_window == 6
    assert vae.decoder.backbone_config.layer_types == ["sliding_attention"] * 2
    assert vae.encoder.backbone_config.sliding_window is None


def test_bf16_load_keeps_dtype():
    vae = AudioVAE.load(VAE, CPU, torch.bfloat16)
    assert vae.decoder.fc1.weight.dtype == torch.bfloat16 and vae.encoder.cls_embed.dtype == torch.bfloat16
    assert vae.decoder.decoder.rotary_emb.inv_freq.dtype == torch.float32  # rebuilt, computed
    wav = vae.decode_whole(torch.randn(1, 3, 64))
    assert wav.dtype == torch.float32 and wav.shape == (1, 3 * 128) and torch.isfinite(wav).all()


@pytest.mark.parametrize(
    "key",
    [
        "decoder.head.istft.window",
        "decoder.decoder.layers.1.self_attn.k_proj.bias",
        "encoder.aggregator.layers.3.mlp.up_proj.weight",
        "encoder.norm.bias",
        "encoder.cls_embed",
    ],
)
def test_missing_key_names_itself(vae_copy, key):
    edit_weights(vae_copy, drop=[key])
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        AudioVAE.load(vae_copy, CPU, torch.float32)


def test_unexpected_key_names_itself(vae_copy):
    edit_weights(vae_copy, add={"decoder.upsampling.weight": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"decoder\.upsampling\.weight"):
        AudioVAE.load(vae_copy, CPU, torch.float32)


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("decoder.head.out.weight", (129, 64)),
        ("encoder.cls_embed", (1, 64)),
        ("decoder.head.istft.window", (96,)),
    ],
)
def test_misshaped_key_names_itself(vae_copy, key, shape):
    edit_weights(vae_copy, reshape={key: shape})
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        AudioVAE.load(vae_copy, CPU, torch.float32)


def test_config_reads_golden():
    cfg = read_vae_config(VAE)
    assert (cfg.sample_rate, cfg.patch_size, cfg.hop, cfg.n_fft, cfg.latent_dim) == (16000, 4, 32, 128, 64)
    assert (cfg.encoder.input_dim, cfg.encoder.hop_size) == (32, 32)
    assert cfg.encoder.aggregator_config().num_hidden_layers == 4
    assert cfg.decoder.backbone_config()._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("sample_rate",), 0, "sample_rate"),
        (("patch_size",), 0, "patch_size"),
        (("patch_size",), -2, "patch_size"),
        (("enc_kwargs", "input_dim"), "32", "input_dim"),
        (("enc_kwargs", "hop_size"), 0, "hop_size"),
        (("dec_kwargs", "output_dim"), -1, "output_dim"),
        (("dec_kwargs", "latent_dim"), 32, "latent_dim"),
        (("dec_kwargs", "backbone", "num_attention_heads"), 5, "num_attention_heads"),
        (("dec_kwargs", "backbone", "hidden_size"), None, "hidden_size"),
        (("dec_kwargs", "backbone", "model_type"), "llama", "model_type"),
        (("enc_kwargs", "backbone", "num_hidden_layers"), 2, "num_hidden_layers"),
        (("dec_kwargs", "backbone"), [], "backbone"),
        (("enc_kwargs",), None, "enc_kwargs"),
    ],
)
def test_bad_config_names_the_field(path, value, field):
    data = golden_config()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=field):
        AudioVAEConfig.from_dict(data)


def test_missing_required_key_is_named():
    data = golden_config()
    del data["dec_kwargs"]["output_dim"]
    with pytest.raises(ValueError, match="output_dim"):
        AudioVAEConfig.from_dict(data)


def test_sliding_window_must_be_positive():
    data = golden_config()
    data["dec_kwargs"]["backbone"].update(use_sliding_window=True, sliding_window=0)
    with pytest.raises(ValueError, match="sliding_window"):
        AudioVAEConfig.from_dict(data)


def test_no_patch_needs_no_aggregator():
    data = golden_config()
    data["patch_size"] = -1
    data["enc_kwargs"]["backbone"]["num_hidden_layers"] = 2  # fine without the 4-layer aggregator
    cfg = AudioVAEConfig.from_dict(data)
    assert (cfg.frames_per_latent, cfg.samples_per_latent) == (1, 32)
    assert not hasattr(AudioVAE(cfg).encoder, "aggregator")


def test_bad_config_file_is_a_checkpoint_error(vae_copy):
    data = golden_config()
    data["dec_kwargs"]["output_dim"] = 0
    (vae_copy / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="output_dim"):
        AudioVAE.load(vae_copy, CPU, torch.float32)


def test_unreadable_config_is_a_checkpoint_error(vae_copy):
    (vae_copy / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        AudioVAE.load(vae_copy, CPU, torch.float32)
    (vae_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        AudioVAE.load(vae_copy, CPU, torch.float32)
