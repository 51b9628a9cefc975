"""The Preview DiT (`MingSD3Transformer`): its checkpoint layout is upstream's, its forward is upstream's
(values recorded from the vendored class), and each addition over diffusers' SD3 is checked on its own:
the 3-D RoPE table, the rotary joint attention, the refiners and the reference tokens."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

from models.ming.generation.sd3 import (
    MingSD3Transformer,
    RotaryJointAttnProcessor,
    joint_rope,
    pooled_projection,
    rotate,
)
from tests.models.ming.gen_sd3_tiny import DIT_CONFIG, random_dit

ANCHOR_AT = [(0, 3, 2, 5), (1, 7, 4, 1), (2, 15, 7, 11), (0, 0, 0, 0), (1, 9, 5, 6), (2, 12, 1, 3)]
# Recorded by running upstream's vendored `SD3Transformer2DModel` (Zihhan318/Ming2 2a0c02a ==
# e58533d `diffusion/sd3_transformer.py` + `diffusion/mm_rope.py`, use_refiner=True, use_qwpe=True,
# diffusers 0.42, fp32 CPU) on `random_dit(0)` and `anchor_inputs`: the outputs at ANCHOR_AT, mean |out|.
UPSTREAM = {
    "no_ref": ([-0.843267, -0.117081, -0.488327, -0.167756, 0.298977, -0.852834], 0.484301),
    "ref": ([-0.837936, -0.119933, -0.486987, -0.170352, 0.297145, -0.85749], 0.483652),
}


@pytest.fixture(scope="module")
def dit() -> MingSD3Transformer:
    return random_dit(0)


def anchor_inputs(cfg) -> dict[str, torch.Tensor]:
    """Three rows at distinct timesteps: latents (3, 16, 8, 12), captions (3, 16, J), pooled (3, P)."""
    g = torch.Generator().manual_seed(5)
    return {
        "hidden_states": torch.randn(3, 16, 8, 12, generator=g),
        "ref": torch.randn(3, 16, 8, 12, generator=g),
        "encoder_hidden_states": torch.randn(3, 16, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(3, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([999.0, 500.5, 3.25]),
    }


@pytest.mark.parametrize("case", ["no_ref", "ref"])
def test_forward_equals_values_recorded_from_upstream(dit, case):
    inputs = anchor_inputs(dit.config)
    ref = inputs.pop("ref")
    with torch.inference_mode():
        out = dit(**inputs, ref_hidden_states=ref if case == "ref" else None, return_dict=False)[0]
    values, mean_abs = UPSTREAM[case]
    assert out.shape == (3, 16, 8, 12)
    assert [float(out[i]) for i in ANCHOR_AT] == pytest.approx(values, abs=1e-5)
    assert float(out.abs().mean()) == pytest.approx(mean_abs, abs=2e-6)


def test_checkpoint_layout_is_stock_sd3_plus_the_ming_modules(dit):
    """Every stock SD3 tensor under its stock name, plus ref_pos_embed and two refiners of two blocks
    each (upstream hard-codes them); the RoPE has no tensors."""
    stock_cfg = {
        k: v for k, v in DIT_CONFIG.items() if k in inspect.signature(SD3Transformer2DModel).parameters
    }
    with torch.device("meta"):
        stock = set(SD3Transformer2DModel(**stock_cfg).state_dict())
    ours = set(dit.state_dict())
    assert stock <= ours
    extra = {k.split(".")[0] + ("." + k.split(".")[1] if "refiner" in k else "") for k in ours - stock}
    assert extra == {"ref_pos_embed", "noise_refiner.0", "noise_refiner.1", "ref_image_refiner.0",
                     "ref_image_refiner.1"}  # fmt: skip
    assert "ref_pos_embed.pos_embed" in ours  # the persistent sin-cos table, saved like pos_embed's


def test_rope_table_positions():
    """Image tokens: frame f, row/column centred on 0 (-(n - n//2) ... n//2 - 1); caption tokens at
    max(rows//2, cols//2) + i on every axis; axes of 20 / 22 / 22 channels, theta 10000."""
    frames, rows, cols, text = 2, 3, 4, 5
    table = joint_rope(frames, rows, cols, text, 64)
    assert table.shape == (frames * rows * cols + text, 32) and table.dtype == torch.complex64

    def expected(f: int, r: int, c: int) -> torch.Tensor:
        angles = []
        for pos, dim in zip((f, r, c), (20, 22, 22), strict=True):
            angles += [pos / 10000 ** (2 * j / dim) for j in range(dim // 2)]
        return torch.polar(torch.ones(32), torch.tensor(angles, dtype=torch.float32))

    index = 1 * rows * cols + 2 * cols + 0  # frame 1, row 2, column 0
    assert torch.allclose(table[index], expected(1, 2 - 2, 0 - 2), atol=1e-6)
    assert torch.allclose(table[0], expected(0, -2, -2), atol=1e-6)
    first_caption = frames * rows * cols
    assert torch.allclose(table[first_caption + 3], expected(5, 5, 5), atol=1e-5)  # max(1, 2) + 3
    with pytest.raises(ValueError, match="rope_max_index"):
        joint_rope(1, 8, 8, 61, 64)


def test_rotate_is_a_complex_product_on_channel_pairs():
    x = torch.randn(1, 2, 3, 4)
    rope = torch.polar(torch.ones(3, 2), torch.randn(3, 2))
    out = rotate(x, rope)
    a, b = x[..., 0::2], x[..., 1::2]
    assert torch.allclose(out[..., 0::2], a * rope.real - b * rope.imag, atol=1e-6)
    assert torch.allclose(out[..., 1::2], a * rope.imag + b * rope.real, atol=1e-6)


@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
@pytest.mark.parametrize("context_pre_only", [False, True])
def test_processor_without_rope_is_diffusers_joint_attention(qk_norm, context_pre_only):
    torch.manual_seed(0)
    attn = Attention(query_dim=64, added_kv_proj_dim=64, dim_head=32, heads=2, out_dim=64, bias=True,
                     context_pre_only=context_pre_only, qk_norm=qk_norm, eps=1e-6)  # fmt: skip
    x, ctx = torch.randn(2, 6, 64), torch.randn(2, 5, 64)
    want = JointAttnProcessor2_0()(attn, x, ctx)
    got = RotaryJointAttnProcessor()(attn, x, ctx)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(RotaryJointAttnProcessor()(attn, x), JointAttnProcessor2_0()(attn, x))


def test_processor_rotates_q_and_k_over_image_then_caption_tokens():
    """Rotating q and k by e^(iθ) at every position leaves attention unchanged when θ is the same
    everywhere (a global phase), and changes it when the positions differ."""
    torch.manual_seed(0)
    attn = Attention(query_dim=64, added_kv_proj_dim=64, dim_head=32, heads=2, out_dim=64, bias=True,
                     context_pre_only=False, eps=1e-6)  # fmt: skip
    x, ctx = torch.randn(1, 6, 64), torch.randn(1, 5, 64)
    plain = RotaryJointAttnProcessor()(attn, x, ctx)
    same = torch.polar(torch.ones(11, 16), torch.full((11, 16), 0.7))
    for a, b in zip(RotaryJointAttnProcessor()(attn, x, ctx, image_rotary_emb=same), plain, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    moved = torch.polar(torch.ones(11, 16), torch.arange(11.0)[:, None].expand(11, 16))
    image, _ = RotaryJointAttnProcessor()(attn, x, ctx, image_rotary_emb=moved)
    assert not torch.allclose(image, plain[0], atol=1e-3)


def test_refiners_and_reference_tokens_matter(dit):
    """The noise refiner acts without a reference; the reference refiner and the reference (also an
    all-zero one) change the output; the output covers the image tokens only."""
    inputs = anchor_inputs(dit.config)
    ref = inputs.pop("ref")
    with torch.inference_mode():
        base = dit(**inputs, return_dict=False)[0]
        with_ref = dit(**inputs, ref_hidden_states=ref, return_dict=False)[0]
        zero_ref = dit(**inputs, ref_hidden_states=torch.zeros_like(ref), return_dict=False)[0]
        saved = [b.ff.net[2].bias.clone() for b in dit.noise_refiner]
        for b in dit.noise_refiner:
            b.ff.net[2].bias.add_(1.0)
        moved = dit(**inputs, return_dict=False)[0]
        for b, s in zip(dit.noise_refiner, saved, strict=True):
            b.ff.net[2].bias.copy_(s)
    assert with_ref.shape == base.shape == zero_ref.shape
    assert (with_ref - base).abs().max() > 1e-3 and (zero_ref - base).abs().max() > 1e-3
    assert (moved - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="reference"):
        dit(**inputs, ref_hidden_states=ref[:, :, :4])


def test_pooled_projection_is_token_mean_then_pairwise_mean():
    """Upstream's widths: (L, 4096) -> 2048 is the token mean with neighbouring pairs averaged."""
    caption = torch.randn(7, 4096)
    want = caption.mean(0).view(2048, 2).mean(1)
    assert torch.allclose(pooled_projection(caption, 2048), want, atol=1e-6)
    assert torch.allclose(pooled_projection(caption[:, :64], 32), caption[:, :64].mean(0).view(32, 2).mean(1))


@pytest.mark.parametrize(("change", "field"), [
    ({"attention_head_dim": 32}, "attention_head_dim"),
    ({"vae_ref_channel_cat": True}, "vae_ref_channel_cat"),
])  # fmt: skip
def test_unsupported_dit_configs_are_named(change, field):
    with torch.device("meta"), pytest.raises(ValueError, match=field):
        MingSD3Transformer(**(DIT_CONFIG | change))
