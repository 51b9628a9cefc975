"""Ming's encoders against the golden set (official Preview thinker): the config parses, the
`vision.` / `audio.` / `linear_proj.` / `linear_proj_audio.` tensors load strictly, and the
L2-normalised image rows (`image`, `image_windows`) and audio rows (`audio`) match within 1e-4.
Also: the audio length formula, per-audio (unpadded) batching, and the attention's native twin."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import CheckpointError
from models.ming.config import MingConfig
from models.ming.encoders import ENCODER_PREFIXES, MingEncoders, WhisperAttention, audio_token_count
from tests.conftest import SHARED
from tests.models.ming.encoder_loading import encoder_tensors, load_encoder_state, load_encoder_weights

GOLDEN = SHARED / "golden" / "ming-tiny"
TINY = GOLDEN / "tiny-ming"
TOL = 1e-4


@pytest.fixture(scope="module")
def raw_config() -> dict:
    if not (GOLDEN / "inputs.safetensors").is_file():
        pytest.skip("shared Ming golden data not found")
    return json.loads((TINY / "config.json").read_text())


@pytest.fixture(scope="module")
def golden(raw_config) -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "inputs.safetensors")


@pytest.fixture(scope="module")
def encoders(raw_config) -> MingEncoders:
    model = MingEncoders(MingConfig.from_dict(raw_config)).eval()
    load_encoder_weights(model, TINY)
    return model


def test_config_parses_the_tiny_checkpoint(raw_config):
    cfg = MingConfig.from_dict(raw_config)
    assert cfg.mlp_depth == 2 and cfg.llm.hidden_size == 64
    assert (cfg.vision.depth, cfg.vision.hidden_size, cfg.vision.window_size) == (2, 32, 56)
    assert cfg.vision.fullatt_block_indexes == (1,) and cfg.vision.out_hidden_size == 8192
    a = cfg.audio
    assert (a.n_mels, a.n_ctx, a.n_state, a.n_head, a.n_layer) == (128, 15000, 32, 2, 2)
    assert (a.ds_kernel_size, a.ds_stride, a.norm_query_embeds) == (3, 2, True)


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("vision_config", "depth", "two", "vision_config.depth"),
        ("vision_config", "out_hidden_size", 4096, "vision_config.out_hidden_size"),
        ("vision_config", "fullatt_block_indexes", [5], "vision_config.fullatt_block_indexes"),
        ("audio_config", "ds_stride", 0, "audio_config.ds_stride"),
        ("audio_config", "whisper_encoder_config", None, "audio_config.whisper_encoder_config"),
        (None, "mlp_depth", 3, "mlp_depth"),
        (None, "vision_config", None, "vision_config"),
    ],
)
def test_config_rejects_bad_fields(raw_config, section, key, value, field):
    raw = copy.deepcopy(raw_config)
    (raw[section] if section else raw)[key] = value
    with pytest.raises(ValueError, match=field):
        MingConfig.from_dict(raw)


def test_config_names_a_missing_whisper_field(raw_config):
    raw = copy.deepcopy(raw_config)
    del raw["audio_config"]["whisper_encoder_config"]["n_head"]
    with pytest.raises(ValueError, match="whisper_encoder_config.n_head"):
        MingConfig.from_dict(raw)


def test_strict_load_covers_every_encoder_key(raw_config, encoders):
    listed = {
        line.split("\t")[0]
        for line in (GOLDEN / "tiny_state_dict_keys.txt").read_text().splitlines()
        if line.startswith(ENCODER_PREFIXES)
    }
    assert set(encoders.state_dict()) == listed
    fresh = MingEncoders(MingConfig.from_dict(raw_config))
    assert load_encoder_weights(fresh, TINY) == listed


@pytest.mark.parametrize("fault", ["missing", "unexpected", "shape"])
def test_strict_load_names_bad_keys(raw_config, fault):
    tensors = encoder_tensors(TINY)
    key = "audio.blocks.1.attn.key.weight"
    if fault == "missing":
        del tensors[key]
    elif fault == "unexpected":
        tensors["audio.blocks.1.attn.key.bias"], key = torch.zeros(32), "audio.blocks.1.attn.key.bias"
    else:
        tensors[key] = torch.zeros(32, 31)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_encoder_state(MingEncoders(MingConfig.from_dict(raw_config)), tensors)


@pytest.fixture(scope="module")
def eager_encoders(raw_config) -> MingEncoders:
    model = MingEncoders(MingConfig.from_dict(raw_config), vision_attn="eager").eval()
    load_encoder_weights(model, TINY)
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("case", ["image", "image_windows"])
def test_image_embeddings_match_the_official_encoder(golden, encoders, eager_encoders, case, attn):
    model = encoders if attn == "sdpa" else eager_encoders
    assert model.vision.blocks[0].attn.config._attn_implementation == attn
    with torch.no_grad():
        ours = model.encode_images(golden[f"{case}.pixel_values"], golden[f"{case}.image_grid_thw"])
    theirs = golden[f"{case}.image_embeds"]
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    print(f"{case} ({attn}): max |diff| {diff:.3e}")
    assert diff < TOL
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(ours)), atol=1e-5)


def test_audio_embeddings_match_the_official_encoder(golden, encoders):
    feats, lengths = golden["audio.audio_feats"], golden["audio.audio_feats_lengths"][:, 0]
    with torch.no_grad():
        ours = encoders.encode_audio(feats, lengths)
    theirs, out_lengths = golden["audio.audio_embeds"], golden["audio.audio_embeds_lengths"][:, 0]
    assert [len(x) for x in ours] == out_lengths.tolist() == [38]
    diff = max((x - theirs[i, : len(x)]).abs().max().item() for i, x in enumerate(ours))
    print(f"audio: max |diff| {diff:.3e}")
    assert diff < TOL


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 8, 9, 150, 151, 3000])
def test_audio_token_count_formula(encoders, length):
    expected = ((length - 3 + 2) // 2 + 1 - 3 + 2) // 2 + 1  # the spec's L_enc; 150 frames -> 38
    assert audio_token_count(length) == expected
    assert (
        audio_token_count(length, encoders.cfg.audio.ds_kernel_size, encoders.cfg.audio.ds_stride) == expected
    )
    feats = torch.randn(1, length, 128, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        assert len(encoders.encode_audio(feats, [length])[0]) == expected


def test_audios_of_different_lengths_encode_unpadded(encoders):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 150, 128, generator=g), torch.randn(1, 97, 128, generator=g)
    batch = torch.zeros(2, 150, 128)
    batch[0], batch[1, :97] = a[0], b[0]
    with torch.no_grad():
        together = encoders.encode_audio(batch, torch.tensor([150, 97]))
        alone = [encoders.encode_audio(a, [150])[0], encoders.encode_audio(b, [97])[0]]
    for x, y in zip(together, alone, strict=True):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="length"):
        encoders.encode_audio(batch, [151, 97])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_whisper_attention_matches_its_native_twin(dtype):
    torch.manual_seed(0)
    attn = WhisperAttention(64, 4).to(dtype)
    x = torch.randn(2, 37, 64, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn.forward_native(x), atol=tol, rtol=tol)
