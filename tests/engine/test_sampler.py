"""Sampler filters, seeds, and stop handling in the generation loop."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, RequestError, SamplingParams
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


def test_seeded_sampling_reproducible_through_llm(golden_copy):
    llm = LLM(golden_copy)
    p = SamplingParams(max_tokens=12, temperature=1.0, top_k=50, seed=1234, ignore_eos=True)
    a = llm.generate([[5, 6, 7]], p)[0].token_ids
    b = llm.generate([[9, 9], [5, 6, 7]], [SamplingParams(max_tokens=5, temperature=1.0, seed=1), p])[
        1
    ].token_ids
    assert a == b
    c = llm.generate(
        [[5, 6, 7]], SamplingParams(max_tokens=12, temperature=1.0, top_k=50, seed=4321, ignore_eos=True)
    )[0].token_ids
    assert a != c


def test_stop_token_ids_and_eos(golden_copy):
    llm = LLM(golden_copy)
    greedy = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    stop_tok = greedy.token_ids[3]
    first = greedy.token_ids.index(stop_tok)
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[stop_tok]))[
        0
    ]
    assert out.token_ids == greedy.token_ids[: first + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop_tok)
    llm.eos_token_ids = {stop_tok}
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=10, temperature=0))[0]
    assert out.finish_reason == "stop" and out.token_ids[-1] == stop_tok
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 10
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=10, temperature=0, min_tokens=first + 1))[0]
    assert len(out.token_ids) > first + 1


def test_context_length_ends_generation(golden_copy):
    llm = LLM(golden_copy)  # max_position_embeddings 256
    out = llm.generate([list(range(1, 250))], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))[
        0
    ]
    assert out.finish_reason == "length" and len(out.token_ids) == 256 - 249
    with pytest.raises(RequestError, match="context"):
        llm.generate([list(range(1, 300))])


@pytest.mark.parametrize("prompt", [[], [1, 2, 100000], [-1]])
def test_bad_token_ids(golden_copy, prompt):
    with pytest.raises(RequestError):
        LLM(golden_copy).generate([prompt])
