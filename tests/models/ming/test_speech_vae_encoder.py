"""The AudioVAE encoder (prompt wav -> latents), which the golden set does not run: a hand computation
on the golden weights with stock transformers Qwen2Models, the shape contract, seeded determinism,
mode vs sample, and upstream's 4-layer quirk on a deeper encoder written to a tiny checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2Model

from models.ming.speech.vae import AudioVAE
from models.ming.speech.vae_config import AudioVAEConfig
from tests.models.ming.speech_golden import VAE, available

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
CPU = torch.device("cpu")
HOP, PATCH, LATENT = 32, 4, 64


@pytest.fixture(scope="module")
def vae():
    return AudioVAE.load(VAE, CPU, torch.float32)


def wav(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def stock_backbone(state: dict, prefix: str, layers: int) -> Qwen2Model:
    backbone = json.loads((VAE / "config.json").read_text())["enc_kwargs"]["backbone"]
    model = Qwen2Model(Qwen2Config(**{**backbone, "num_hidden_layers": layers})).eval()
    model.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return model


def hand_encoder(x: torch.Tensor) -> torch.Tensor:
    """Upstream's Encoder.forward written out on the checkpoint tensors: (B, S) -> (B, N, 2C)."""
    state = load_file(VAE / "model.safetensors")
    frames = -(-x.shape[1] // HOP)
    x = F.pad(x, (0, frames * HOP - x.shape[1])).reshape(x.shape[0], frames, HOP)  # input_dim == hop
    h = x @ state["encoder.fc1.weight"].T
    h = h @ state["encoder.fc2.weight"].T + state["encoder.fc2.bias"]
    h = stock_backbone(state, "encoder.encoder.", 4)(inputs_embeds=h).last_hidden_state
    patches = math.ceil(frames / PATCH)
    h = F.pad(h, (0, 0, 0, patches * PATCH - frames))
    seq, cls_at = [], []
    for n in range(patches):  # [patch frames, CLS] per patch, one causal sequence
        seq += [h[:, n * PATCH + i] for i in range(PATCH)] + [
            state["encoder.cls_embed"][0].expand(x.shape[0], -1)
        ]
        cls_at.append(len(seq) - 1)
    out = stock_backbone(state, "encoder.aggregator.", 4)(inputs_embeds=torch.stack(seq, 1)).last_hidden_state
    return out[:, cls_at] @ state["encoder.fc3.weight"].T + state["encoder.fc3.bias"]


@pytest.mark.parametrize("samples", [HOP * PATCH * 3, HOP * PATCH * 3 + 1, 37, 1000])
def test_encoder_equals_hand_computation(vae, samples):
    x = wav(2, samples, seed=samples)
    with torch.inference_mode():
        ours = vae.encoder(x)
    ref = hand_encoder(x)
    assert ours.shape == ref.shape == (2, math.ceil(math.ceil(samples / HOP) / PATCH), 2 * LATENT)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("samples", "frames"), [(1, 1), (128, 1), (129, 2), (128 * 5, 5), (128 * 5 - 1, 5)])
def test_latent_count(vae, samples, frames):
    assert vae.encode_latent(wav(1, samples)).shape == (1, frames, LATENT)


def test_sample_is_mean_plus_std_times_the_generators_noise(vae):
    x = wav(2, 900, seed=1)
    with torch.inference_mode():
        params = vae.encoder(x)  # (B, T, 2C)
    mean, scale = params[..., :LATENT], params[..., LATENT:]
    std = F.softplus(scale) + 1e-4  # diffusers' Oobleck distribution
    noise = torch.randn(2, LATENT, params.shape[1], generator=torch.Generator().manual_seed(9)).transpose(
        1, 2
    )
    drawn = vae.encode_latent(x, torch.Generator().manual_seed(9))
    assert torch.allclose(drawn, mean + std * noise, atol=1e-6, rtol=0)
    assert torch.allclose(vae.encode_latent(x, sample=False), mean, atol=0, rtol=0)


def test_seeded_draws_are_deterministic(vae):
    x = wav(1, 700, seed=2)
    a = vae.encode_latent(x, torch.Generator().manual_seed(3))
    b = vae.encode_latent(x, torch.Generator().manual_seed(3))
    c = vae.encode_latent(x, torch.Generator().manual_seed(4))
    mode = vae.encode_latent(x, sample=False)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, mode)
    assert torch.equal(mode, vae.encode_latent(x, sample=False))


def test_batch_rows_are_independent(vae):
    x = wav(3, 640, seed=5)
    both = vae.encode_latent(x, sample=False)
    for row in range(3):
        assert torch.allclose(
            both[row : row + 1], vae.encode_latent(x[row : row + 1], sample=False), atol=1e-6
        )


def test_bad_wav_is_refused(vae):
    for bad in (torch.zeros(3), torch.zeros(1, 0)):
        with pytest.raises(ValueError, match="wav"):
            vae.encode_latent(bad)


def test_latents_decode_to_the_right_length(vae):
    """encode -> decode round trip keeps the contract: T latents -> T * hop * P samples."""
    latents = vae.encode_latent(wav(1, 128 * 6, seed=6), torch.Generator().manual_seed(0))
    assert vae.decode_whole(latents).shape == (1, 128 * 6)


def test_deeper_encoder_runs_its_first_four_layers(tmp_path):
    """Upstream sets num_hidden_layers=4 on the config its encoder shares with the aggregator, and
    Qwen2Model runs layers[:num_hidden_layers]: a 6-layer encoder loads all six, runs four."""
    data = json.loads((VAE / "config.json").read_text())
    data["enc_kwargs"]["backbone"]["num_hidden_layers"] = 6
    torch.manual_seed(0)
    deep = AudioVAE(AudioVAEConfig.from_dict(data)).eval()
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in deep.state_dict().items()}
    folder = tmp_path / "vae6"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(data))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    loaded = AudioVAE.load(folder, CPU, torch.float32)
    assert len(loaded.encoder.encoder.layers) == 6
    assert torch.equal(
        loaded.state_dict()["encoder.encoder.layers.5.mlp.up_proj.weight"],
        state["encoder.encoder.layers.5.mlp.up_proj.weight"],
    )

    data["enc_kwargs"]["backbone"]["num_hidden_layers"] = 4  # the same checkpoint cut to four layers
    cut = AudioVAE(AudioVAEConfig.from_dict(data)).eval()
    cut.load_state_dict(
        {k: v for k, v in state.items() if ".encoder.layers.4." not in k and ".encoder.layers.5." not in k}
    )
    x = wav(1, 640, seed=7)
    assert torch.equal(loaded.encode_latent(x, sample=False), cut.encode_latent(x, sample=False))
