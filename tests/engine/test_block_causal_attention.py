"""Block-causal attention (masked-diffusion LMs): SDPA path == native twin == the mask's definition."""

from __future__ import annotations

import pytest
import torch

from engine.layers.attention import (
    BlockCausalContext,
    attention,
    block_causal_attention,
    block_causal_attention_native,
    block_causal_mask,
)


def qkv(t: int, s: int, h: int, hkv: int, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(t, h, d, generator=g)
    k = torch.randn(s, hkv, d, generator=g)
    v = torch.randn(s, hkv, d, generator=g)
    return q, k, v


@pytest.mark.parametrize("block", [None, 1, 3, 8, 64])
@pytest.mark.parametrize(("t", "s"), [(1, 1), (20, 20), (8, 24), (5, 21), (11, 24)])
@pytest.mark.parametrize(("h", "hkv"), [(4, 4), (4, 2), (8, 1)])
def test_sdpa_matches_native(block, t, s, h, hkv):
    q, k, v = qkv(t, s, h, hkv)
    torch.testing.assert_close(
        block_causal_attention(q, k, v, block),
        block_causal_attention_native(q, k, v, block),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("block", [None, 1, 3, 8])
def test_mask_is_the_block_rule(block):
    t, s = 7, 19
    mask = block_causal_mask(t, s, block, "cpu")
    for i in range(t):
        p = s - t + i  # the query's absolute position
        for j in range(s):
            assert mask[i, j].item() == (block is None or j // block <= p // block), (i, j)


def test_block_one_is_causal_and_a_large_block_is_bidirectional():
    q, k, v = qkv(12, 12, 4, 2)
    torch.testing.assert_close(block_causal_attention(q, k, v, 1), attention(q, k, v, past=0))
    torch.testing.assert_close(block_causal_attention(q, k, v, 12), block_causal_attention(q, k, v, None))


def test_queries_at_the_tail_equal_the_full_forward_rows():
    """Prefix K/V + current block: the last T rows of a full block-causal pass, computed alone."""
    q, k, v = qkv(24, 24, 4, 2)
    full = block_causal_attention(q, k, v, 8)
    torch.testing.assert_close(block_causal_attention(q[16:], k, v, 8), full[16:])
    torch.testing.assert_close(block_causal_attention(q[8:], k, v, 8), full[8:])


def test_context_and_errors():
    q, k, v = qkv(6, 6, 2, 2)
    ctx = BlockCausalContext(4)
    torch.testing.assert_close(ctx.attend(0, q, k, v), block_causal_attention_native(q, k, v, 4))
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="block_length"):
            BlockCausalContext(bad)
    with pytest.raises(ValueError, match="T=6 > S=3"):
        block_causal_attention(q, k[:3], v[:3], 4)
