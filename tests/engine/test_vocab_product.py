"""The vocab projection's few-rows fast path agrees with F.linear, and is taken only where it pays."""

from __future__ import annotations

import pytest
import torch

from engine.layers.vocab_product import FEW_ROWS, TALL, vocab_product, vocab_product_native


@pytest.mark.parametrize("rows", [1, 2, 5, FEW_ROWS, FEW_ROWS + 1, 40])
@pytest.mark.parametrize("vocab", [TALL + 808, 1000])
def test_few_rows_agree_with_the_native_twin(rows, vocab):
    g = torch.Generator().manual_seed(rows * vocab)
    x, w = torch.randn(rows, 64, generator=g), torch.randn(vocab, 64, generator=g)
    got, want = vocab_product(x, w), vocab_product_native(x, w)
    assert got.shape == (rows, vocab) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if rows > FEW_ROWS or vocab < TALL:
        assert torch.equal(got, want)  # the native path itself


def test_other_dtypes_take_the_native_path():
    x, w = torch.randn(3, 32, dtype=torch.bfloat16), torch.randn(TALL, 32, dtype=torch.bfloat16)
    assert torch.equal(vocab_product(x, w), vocab_product_native(x, w))
