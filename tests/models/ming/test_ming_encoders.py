"""Ming's encoders against the golden set (official Preview thinker): `encode_images` (ViT ->
merger -> linear_proj -> L2 norm) on `image` / `image_windows` (6 ViT windows), with sdpa and its
eager twin, and `encode_audio` (Whisper -> linear_proj_audio -> L2 norm) on `audio`, each within 1e-4
of the recorded `image_embeds` / `audio_embeds`. Also the audio length formula, unpadded per-clip
encoding, the Whisper attention's native twin and the errors a bad input gets."""

from __future__ import annotations

import pytest
import torch

from models.ming.audio import WhisperAttention, audio_token_count
from tests.models.ming.ming_golden import TOL


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("case", ["image", "image_windows"])
def test_image_embeddings_match_the_official_encoder(ming_tensors, thinker, eager_thinker, case, attn):
    model = thinker if attn == "sdpa" else eager_thinker
    assert model.vision.blocks[0].attn.config._attn_implementation == attn
    with torch.inference_mode():
        ours = model.encode_images(
            ming_tensors[f"{case}.pixel_values"], ming_tensors[f"{case}.image_grid_thw"]
        )
    theirs = ming_tensors[f"{case}.image_embeds"]
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    print(f"{case} ({attn}): max |diff| {diff:.3e}")
    assert diff < TOL
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(ours)), atol=1e-5)


def test_audio_embeddings_match_the_official_encoder(ming_tensors, thinker):
    t = {k.split(".", 1)[1]: v for k, v in ming_tensors.items() if k.startswith("audio.")}
    with torch.inference_mode():
        ours = thinker.encode_audio(
            t["audio_feats"], t["audio_feats_lengths"], t["audio_placeholder_loc_lens"]
        )
    n = int(t["audio_embeds_lengths"][0, 0])
    assert ours.shape == (n, 64) and n == 38
    diff = (ours - t["audio_embeds"][0, :n]).abs().max().item()
    print(f"audio: max |diff| {diff:.3e}")
    assert diff < TOL


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 8, 9, 150, 151, 3000])
def test_audio_token_count_formula(thinker, length):
    expected = ((length - 3 + 2) // 2 + 1 - 3 + 2) // 2 + 1  # the spec's L_enc; 150 frames -> 38
    assert audio_token_count(length) == expected
    feats = torch.randn(1, length, 128, generator=torch.Generator().manual_seed(length))
    with torch.inference_mode():
        assert len(thinker.encode_audio(feats, [length])) == expected


def test_audios_of_different_lengths_encode_unpadded(thinker):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 150, 128, generator=g), torch.randn(1, 97, 128, generator=g)
    batch = torch.zeros(2, 150, 128)
    batch[0], batch[1, :97] = a[0], b[0]
    with torch.inference_mode():
        together = thinker.encode_audio(batch, torch.tensor([[150, 97]]), torch.tensor([[[3, 38], [50, 25]]]))
        alone = torch.cat([thinker.encode_audio(a, [150]), thinker.encode_audio(b, [97])])
    torch.testing.assert_close(together, alone)
    with pytest.raises(ValueError, match="length"):
        thinker.encode_audio(batch, [151, 97])
    with pytest.raises(ValueError, match=r"\[38, 25\] tokens, the prompt holds \[38, 24\]"):
        thinker.encode_audio(batch, [150, 97], torch.tensor([[[3, 38], [50, 24]]]))


def test_pixel_values_must_match_the_grid(ming_tensors, thinker):
    pixels, grid = ming_tensors["image.pixel_values"], ming_tensors["image.image_grid_thw"]
    with pytest.raises(ValueError, match="16 patches"):
        thinker.encode_images(pixels[:12], grid)
    with pytest.raises(ValueError, match="grid_thw"):
        thinker.encode_images(pixels, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_whisper_attention_matches_its_native_twin(dtype):
    torch.manual_seed(0)
    attn = WhisperAttention(64, 4).to(dtype)
    x = torch.randn(2, 37, 64, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn.forward_native(x), atol=tol, rtol=tol)


@torch.inference_mode()
def test_the_vit_is_transformers_qwen2_5_vl_vision_model(thinker, ming_tensors):
    """MingVision is transformers' class under our config mapping: the same weights in a plain
    Qwen2_5_VisionTransformerPretrainedModel give the same merged features."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from models.ming.vision import hf_vision_config

    plain = Qwen2_5_VisionTransformerPretrainedModel(hf_vision_config(thinker.config.vision)).eval()
    plain.load_state_dict(thinker.vision.state_dict(), strict=True)
    pixels, grid = ming_tensors["image_windows.pixel_values"], ming_tensors["image_windows.image_grid_thw"]
    assert torch.equal(thinker.vision.features(pixels, grid), plain(pixels, grid_thw=grid).pooler_output)


@torch.inference_mode()
def test_whisper_block_equals_transformers_whisper_encoder_layer():
    """Our Whisper block (openai-whisper checkpoint names) computes what transformers'
    WhisperEncoderLayer does with the renamed weights; it is kept for the names and the
    mask-free, variable-length call."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

    from models.ming.audio import WhisperBlock

    torch.manual_seed(0)
    ours = WhisperBlock(32, 2).eval()
    for p in ours.parameters():
        p.data.normal_(std=0.2)
    hf_cfg = WhisperConfig(d_model=32, encoder_attention_heads=2, encoder_ffn_dim=128)
    hf_cfg._attn_implementation = "eager"
    theirs = WhisperEncoderLayer(hf_cfg).eval()
    names = {
        "attn.query": "self_attn.q_proj",
        "attn.key": "self_attn.k_proj",
        "attn.value": "self_attn.v_proj",
        "attn.out": "self_attn.out_proj",
        "attn_ln": "self_attn_layer_norm",
        "mlp.0": "fc1",
        "mlp.2": "fc2",
        "mlp_ln": "final_layer_norm",
    }
    state = {}
    for key, value in ours.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        state[f"{names[module]}.{leaf}"] = value
    theirs.load_state_dict(state, strict=True)
    x = torch.randn(1, 75, 32)
    torch.testing.assert_close(ours(x), theirs(x, attention_mask=None), atol=1e-5, rtol=1e-5)
