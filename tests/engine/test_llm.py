"""The offline LLM API end to end on the golden tiny model: seeds, stops, context limits, bad ids."""

from __future__ import annotations

import pytest

from engine import LLM, RequestError, SamplingParams


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
