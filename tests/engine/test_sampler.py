"""Sampler filters, seeds, and stop handling in the generation loop."""

from __future__ import annotations

import pytest
import torch

from engine import RequestError, SamplingParams
from engine.detokenizer import find_stop
from engine.sampler import filter_logits, make_generator, sample


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    assert sample(logits, [SamplingParams(temperature=0)] * 2, [None, None]) == [1, 0]


def test_top_k_keeps_only_k_best():
    out = filter_logits(torch.tensor([1.0, 4.0, 3.0, 2.0]), SamplingParams(temperature=1.0, top_k=2))
    assert torch.isinf(out[[0, 3]]).all() and torch.isfinite(out[[1, 2]]).all()


def test_top_p_keeps_smallest_prefix_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.8))
    assert torch.isfinite(out[:2]).all() and torch.isinf(out[2:]).all()
    out = filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.81))
    assert torch.isfinite(out[:3]).all() and torch.isinf(out[3])


def test_min_p_relative_to_the_best():
    probs = torch.tensor([0.6, 0.3, 0.05, 0.05])
    out = filter_logits(probs.log(), SamplingParams(temperature=1.0, min_p=0.2))
    assert torch.isfinite(out[:2]).all() and torch.isinf(out[2:]).all()


def test_temperature_scales_logits():
    out = filter_logits(torch.tensor([2.0, 4.0]), SamplingParams(temperature=2.0))
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0]))


def test_same_seed_same_draws_whatever_the_batch():
    logits = torch.randn(1, 50)
    p = SamplingParams(temperature=1.0, seed=7)
    alone = [sample(logits, [p], [g])[0] for g in [make_generator(7)] for _ in range(5)]
    g1, g2 = make_generator(7), make_generator(99)
    other = SamplingParams(temperature=0.8, seed=99)
    batched = [sample(torch.cat([torch.randn(1, 50), logits]), [other, p], [g2, g1])[1] for _ in range(5)]
    assert alone == batched


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_tokens=0),
        dict(temperature=-1),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(top_k=-2),
        dict(min_p=2),
        dict(stop=[""]),
        dict(min_tokens=99, max_tokens=4),
    ],
)
def test_invalid_params_are_rejected(bad):
    with pytest.raises(RequestError):
        SamplingParams(**bad)


def test_find_stop_across_boundaries():
    assert find_stop("hello wor", 3, ["world"]) is None
    assert find_stop("hello world", 2, ["world"]) == (6, "world")
    assert find_stop("ab STOP cd", 2, ["STOP"]) is None  # ended before the new text
    assert find_stop("xxSTOPyySTO", 5, ["STO", "STOP"]) == (8, "STO")
