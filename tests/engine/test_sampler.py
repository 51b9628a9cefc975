"""Sampler unit tests on plain tensors: filters, penalties, min_tokens, logprobs, seeds, fallbacks, params.

No model: logits are hand-written or random; every state is built with `state(...)` below.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import RequestError, SamplingParams, sampler
from engine.detokenizer import find_stop
from engine.sampler import SamplerOutput, SamplingState, filter_logits, penalised_logits, sample

INF = math.inf


def state(prompt=(), out=(), eos=(), **params) -> SamplingState:
    s = SamplingState.new(SamplingParams(**params), list(prompt), frozenset(eos))
    s.output_token_ids.extend(out)
    return s


def row(*values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


# ---- greedy and filters ------------------------------------------------------------------------


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    out = sample(logits, [state(temperature=0), state(temperature=0)])
    assert out == SamplerOutput([1, 0], [None, None])


def test_empty_batch_and_bad_shapes():
    assert sample(torch.zeros(0, 7), []) == SamplerOutput([], [])
    with pytest.raises(ValueError, match="logits"):
        sample(torch.zeros(2, 7), [state()])
    with pytest.raises(ValueError, match="logits"):
        sample(torch.zeros(7), [state()])


def test_top_k_keeps_only_k_best():
    out = filter_logits(torch.tensor([1.0, 4.0, 3.0, 2.0]), SamplingParams(top_k=2))
    assert torch.isinf(out[[0, 3]]).all() and torch.isfinite(out[[1, 2]]).all()
    assert torch.isfinite(filter_logits(torch.zeros(4), SamplingParams(top_k=9))).all()  # k > V: no-op


def test_ties_at_a_filter_boundary_are_all_kept():
    logits = torch.tensor([3.0, 2.0, 1.0, 2.0, 0.0])
    out = filter_logits(logits, SamplingParams(top_k=2))
    assert torch.isfinite(out).tolist() == [True, True, False, True, False]
    equal = torch.zeros(4)  # top-p 0.3 reaches its mass at the first token, whose ties all stay
    assert torch.isfinite(filter_logits(equal, SamplingParams(top_p=0.3))).all()
    # top-k 2 keeps the four tied 1.0s too, and top-p's mass counts them all: p(2.0) = 0.40 < 0.6
    logits = torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    out = filter_logits(logits, SamplingParams(top_k=2, top_p=0.6))
    assert torch.isfinite(out).tolist() == [True] * 5 + [False]


def test_top_p_keeps_smallest_prefix_reaching_p():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # ranks: 1, 3, 0, 2
    out = filter_logits(probs.log(), SamplingParams(top_p=0.79))
    assert torch.isfinite(out[[1, 3]]).all() and torch.isinf(out[[0, 2]]).all()
    out = filter_logits(probs.log(), SamplingParams(top_p=0.81))
    assert torch.isfinite(out[[0, 1, 3]]).all() and torch.isinf(out[2])
    out = filter_logits(probs.log(), SamplingParams(top_p=1e-6))  # always at least the best token
    assert torch.isfinite(out).tolist() == [False, True, False, False]


def test_top_p_applies_to_the_top_k_renormalised():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])  # top-2 renormalised: 0.571, 0.429
    out = filter_logits(probs.log(), SamplingParams(top_k=3, top_p=0.6))
    assert torch.isfinite(out).tolist() == [True, True, False, False]  # 0.4/0.9 = 0.44 < 0.6
    out = filter_logits(probs.log(), SamplingParams(top_k=2, top_p=0.55))
    assert torch.isfinite(out).tolist() == [True, False, False, False]  # 0.4/0.7 = 0.57 >= 0.55


def test_min_p_relative_to_the_best():
    probs = torch.tensor([0.6, 0.3, 0.05, 0.05])
    out = filter_logits(probs.log(), SamplingParams(min_p=0.2))
    assert torch.isfinite(out[:2]).all() and torch.isinf(out[2:]).all()


def test_temperature_scales_logits_and_greedy_filter_is_one_hot():
    out = filter_logits(torch.tensor([2.0, 4.0]), SamplingParams(temperature=2.0))
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0]))
    out = filter_logits(torch.tensor([2.0, 4.0, 1.0]), SamplingParams(temperature=0))
    assert torch.isfinite(out).tolist() == [False, True, False]


def test_draws_follow_the_filtered_distribution():
    """Many seeds, one draw each: frequencies match softmax(filtered logits); rejects never appear."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    params = dict(temperature=0.7, top_k=5, top_p=0.95, min_p=0.02)
    expected = filter_logits(logits, SamplingParams(**params)).softmax(-1)
    n = 4000
    states = [state(seed=i, **params) for i in range(n)]
    tokens = sample(logits.expand(n, -1), states).token_ids
    freq = torch.bincount(torch.tensor(tokens), minlength=6).float() / n
    assert (freq[expected == 0] == 0).all()
    torch.testing.assert_close(freq, expected, atol=0.03, rtol=0)


@pytest.mark.parametrize(("u", "expected"), [(0.0, 1), (1.0, 2)])
def test_extreme_uniforms_land_on_tokens_with_mass(monkeypatch, u, expected):
    """u = 0 picks the first id with mass; u = 1 (beyond rand's range) the last, never a -inf id."""
    monkeypatch.setattr(sampler, "_uniforms", lambda gens, device: torch.full((len(gens),), u))
    assert sample(row(-INF, 0.0, 0.0, -INF), [state(seed=0)]).token_ids == [expected]


# ---- min_tokens and penalties ------------------------------------------------------------------


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    logits = row(5.0, 4.0, 3.0, 2.0, 1.0)
    before = state(out=[4], eos={0}, stop_token_ids=[1], min_tokens=2, temperature=0)
    assert torch.isinf(penalised_logits(logits, [before])[0, :2]).all()
    assert sample(logits, [before]).token_ids == [2]
    reached = state(out=[4, 4], eos={0}, stop_token_ids=[1], min_tokens=2, temperature=0)
    assert penalised_logits(logits, [reached]) is logits
    assert sample(logits, [reached]).token_ids == [0]


def test_min_tokens_with_ignore_eos_masks_only_stop_ids():
    logits = row(5.0, 4.0, 3.0)
    s = state(eos={0}, stop_token_ids=[1, 99], ignore_eos=True, min_tokens=1, temperature=0)
    got = penalised_logits(logits, [s])
    assert got[0].tolist() == [5.0, -INF, 3.0]  # id 99 is outside the vocabulary: ignored
    assert logits[0].tolist() == [5.0, 4.0, 3.0]  # the input is left alone


def test_repetition_penalty_matches_hand_computation():
    logits = row(2.0, -2.0, 1.0, 0.5, 3.0)
    s = state(prompt=[0, 0], out=[1, 3], repetition_penalty=2.0)
    got = penalised_logits(logits, [s])[0].tolist()
    assert got == [1.0, -4.0, 1.0, 0.25, 3.0]  # seen: 0 (prompt), 1 and 3 (output)
    s = state(prompt=[4], repetition_penalty=0.5)  # < 1 encourages repeats
    assert penalised_logits(logits, [s])[0].tolist() == [2.0, -2.0, 1.0, 0.5, 6.0]


def test_frequency_and_presence_penalties_count_output_only():
    logits = row(2.0, -2.0, 1.0, 0.5, 3.0)
    s = state(prompt=[0, 2], out=[1, 1, 1, 3], frequency_penalty=0.5, presence_penalty=0.25)
    got = penalised_logits(logits, [s])[0].tolist()
    assert got == [2.0, -2.0 - 1.5 - 0.25, 1.0, 0.5 - 0.5 - 0.25, 3.0]
    s = state(out=[4], frequency_penalty=-1.0, presence_penalty=-2.0)  # negative: encourage
    assert penalised_logits(logits, [s])[0].tolist() == [2.0, -2.0, 1.0, 0.5, 6.0]


def test_penalties_combine_repetition_first():
    logits = row(4.0, -1.0, 0.0)
    s = state(prompt=[1], out=[0, 0], repetition_penalty=2.0, frequency_penalty=1.0, presence_penalty=0.5)
    assert penalised_logits(logits, [s])[0].tolist() == [4.0 / 2 - 2.0 - 0.5, -2.0, 0.0]


def test_only_rows_with_penalties_change_and_greedy_sees_them():
    logits = torch.tensor([[3.0, 2.9, 0.0], [3.0, 2.9, 0.0]])
    plain = state(out=[0, 0], temperature=0)
    penalised = state(out=[0, 0], temperature=0, frequency_penalty=0.1)
    got = penalised_logits(logits, [plain, penalised])
    assert got[0].tolist() == logits[0].tolist()
    assert sample(logits, [plain, penalised]).token_ids == [0, 1]


def test_prompt_cache_follows_a_changed_prompt():
    logits = row(1.0, 1.0, 1.0)
    s = state(prompt=[0], repetition_penalty=2.0)
    assert penalised_logits(logits, [s])[0].tolist() == [0.5, 1.0, 1.0]
    s.prompt_token_ids.append(2)
    assert penalised_logits(logits, [s])[0].tolist() == [0.5, 1.0, 0.5]


# ---- logprobs ----------------------------------------------------------------------------------


def test_logprobs_are_raw_log_softmax_with_top_n_in_rank_order():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    states = [
        state(logprobs=5, temperature=0.8, seed=1, repetition_penalty=1.5, prompt=[3, 4]),
        state(logprobs=None),
        state(logprobs=3, temperature=0, out=[1], frequency_penalty=2.0),
    ]
    out = sample(logits, states)
    assert out.logprobs[1] is None
    raw = logits.log_softmax(-1)
    for i, n in ((0, 5), (2, 3)):
        lp = out.logprobs[i]
        top = raw[i].topk(n)
        assert list(lp)[:n] == top.indices.tolist()
        assert out.token_ids[i] in lp and len(lp) in (n, n + 1)
        for tok, value in lp.items():
            assert value == pytest.approx(raw[i, tok].item(), abs=1e-6)


def test_logprobs_include_the_sampled_token_outside_the_top_n():
    logits = row(5.0, 1.0, 0.0)
    s = state(logprobs=1, temperature=0, eos={0}, min_tokens=1)  # the best id is banned
    out = sample(logits, [s])
    assert out.token_ids == [1]
    raw = logits[0].log_softmax(-1)
    assert list(out.logprobs[0]) == [0, 1]  # the top-1, then the sampled id
    assert list(out.logprobs[0].values()) == pytest.approx(raw[:2].tolist())
    zero = sample(logits, [state(logprobs=0, temperature=0)])
    assert zero.logprobs == [{0: pytest.approx(raw[0].item())}]


# ---- seeds, batch independence, fallbacks -------------------------------------------------------


def _run(steps: list[torch.Tensor], seeded: SamplingParams, others: list, position: int) -> list[int]:
    """Sample `steps` logits rows for the seeded request with `others` (params, logits per step) beside it."""
    me = state(prompt=[1, 2, 3], **vars(seeded))
    neighbours = [state(prompt=[0], **vars(p)) for p, _ in others]
    for t, mine in enumerate(steps):
        rows = [logits[t] for _, logits in others]
        states = list(neighbours)
        rows.insert(position, mine)
        states.insert(position, me)
        out = sample(torch.stack(rows), states)
        for s, tok in zip(states, out.token_ids, strict=True):
            s.output_token_ids.append(tok)
    return me.output_token_ids


sampled_params = st.builds(
    SamplingParams,
    max_tokens=st.just(64),
    temperature=st.floats(0.0, 2.0),
    top_k=st.integers(0, 40),
    top_p=st.floats(0.05, 1.0),
    min_p=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**32),
    repetition_penalty=st.floats(0.5, 2.0),
    presence_penalty=st.floats(-2.0, 2.0),
    frequency_penalty=st.floats(-2.0, 2.0),
    logprobs=st.none() | st.integers(0, 5),
)


@settings(max_examples=50, deadline=None)
@given(
    seeded=sampled_params,
    neighbours=st.lists(sampled_params, max_size=5),
    vocab=st.integers(3, 64),
    data_seed=st.integers(0, 2**16),
    where=st.integers(0, 5),
    ties=st.booleans(),
)
def test_seeded_tokens_ignore_batch_composition_and_position(
    seeded, neighbours, vocab, data_seed, where, ties
):
    gen = torch.Generator().manual_seed(data_seed)

    def logits(*shape: int) -> torch.Tensor:  # few distinct values when `ties`: filter boundaries tie
        return (
            torch.randint(-2, 3, shape, generator=gen).float()
            if ties
            else torch.randn(shape, generator=gen) * 3
        )

    steps = [logits(vocab) for _ in range(10)]
    others = [(p, logits(10, vocab)) for p in neighbours]
    alone = _run(steps, seeded, [], 0)
    assert alone == _run(steps, seeded, others, min(where, len(others)))


def test_same_seed_same_draws_different_seed_differs():
    torch.manual_seed(1)
    steps = [torch.randn(200) for _ in range(10)]
    a = _run(steps, SamplingParams(seed=7), [], 0)
    assert a == _run(steps, SamplingParams(seed=7), [], 0)
    assert a != _run(steps, SamplingParams(seed=8), [], 0)
    assert sampler.make_generator(None).initial_seed() != sampler.make_generator(None).initial_seed()


def test_greedy_rows_ignore_sampled_rows_and_keep_their_generator():
    torch.manual_seed(2)
    logits = torch.randn(4, 30)
    greedy = state(temperature=0, seed=3, prompt=[5], repetition_penalty=1.7)
    before = greedy.generator.get_state()
    alone = sample(logits[:1], [greedy]).token_ids
    mixed = sample(logits, [greedy, state(seed=1), state(seed=2, top_p=0.5), state(temperature=0)])
    assert mixed.token_ids[0] == alone[0] == penalised_logits(logits[:1], [greedy]).argmax().item()
    assert mixed.token_ids[3] == logits[3].argmax().item()
    assert torch.equal(greedy.generator.get_state(), before)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_all_masked_row_falls_back_to_raw_argmax(temperature):
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    dead = state(eos={1}, stop_token_ids=[0, 2], min_tokens=1, temperature=temperature, seed=0)
    fine = state(temperature=0)
    assert sample(logits, [dead, fine]).token_ids == [1, 1]


def test_non_finite_rows_never_crash_the_batch():
    logits = torch.tensor(
        [
            [-INF, -INF, -INF, -INF],
            [0.0, INF, 0.0, 0.0],  # +inf: that token is certain
            [0.0, math.nan, 1.0, 0.0],
            [0.0, 0.0, 5.0, 0.0],
        ]
    )
    states = [state(seed=0), state(seed=1), state(seed=2), state(temperature=0)]
    out = sample(logits, states)
    assert out.token_ids[1] == 1 and out.token_ids[3] == 2
    assert all(0 <= t < 4 for t in out.token_ids)
    tiny = sample(row(1.0, 2.0, 0.0), [state(temperature=1e-30, seed=0)])  # scaled logits overflow
    assert tiny.token_ids == [1]


# ---- SamplingParams validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=2.5), "max_tokens"),
        (dict(temperature=-1), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(min_p=2), "min_p"),
        (dict(min_p=-0.1), "min_p"),
        (dict(seed=2**64), "seed"),
        (dict(seed="7"), "seed"),
        (dict(stop=[""]), "stop"),
        (dict(stop=5), "stop"),
        (dict(stop_token_ids=[-1]), "stop_token_ids"),
        (dict(stop_token_ids=["a"]), "stop_token_ids"),
        (dict(ignore_eos="yes"), "ignore_eos"),
        (dict(min_tokens=-1), "min_tokens"),
        (dict(min_tokens=99, max_tokens=4), "min_tokens"),
        (dict(skip_special_tokens=None), "skip_special_tokens"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(frequency_penalty=-2.01), "frequency_penalty"),
        (dict(frequency_penalty=math.inf), "frequency_penalty"),
        (dict(logprobs=-1), "logprobs"),
        (dict(logprobs=21), "logprobs"),
    ],
)
def test_invalid_params_are_rejected_naming_the_field(bad, field):
    with pytest.raises(RequestError, match=rf"^{field} .*got "):
        SamplingParams(**bad)


def test_param_messages_give_the_range():
    with pytest.raises(RequestError, match=r"^top_p must be in \(0, 1\], got 1\.5$"):
        SamplingParams(top_p=1.5)
    with pytest.raises(RequestError, match=r"^presence_penalty must be in \[-2, 2\], got 3$"):
        SamplingParams(presence_penalty=3)


def test_valid_params_are_normalised():
    p = SamplingParams(top_k=-1, stop="END", temperature=0, logprobs=20, presence_penalty=-2)
    assert p.top_k == 0 and p.stop == ["END"] and p.greedy and p.logprobs == 20
    assert p.has_penalties and not SamplingParams().has_penalties
    assert isinstance(p.temperature, float)


# ---- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_matches_cpu_and_stays_batch_independent():
    torch.manual_seed(3)
    steps = [torch.randn(1000) for _ in range(10)]
    params = SamplingParams(seed=11, top_k=50, top_p=0.9, repetition_penalty=1.2, logprobs=3)
    cpu = _run(steps, params, [], 0)
    cuda_steps = [s.cuda() for s in steps]
    others = [(SamplingParams(seed=5, min_p=0.1), torch.randn(10, 1000).cuda())]
    assert _run(cuda_steps, params, [], 0) == _run(cuda_steps, params, others, 1) == cpu
    logits = torch.randn(3, 1000)
    states = lambda: [state(temperature=0, logprobs=2), state(seed=1, logprobs=2), state(temperature=0)]  # noqa: E731
    on_cpu, on_cuda = sample(logits, states()), sample(logits.cuda(), states())
    assert on_cuda.token_ids == on_cpu.token_ids
    for a, b in zip(on_cpu.logprobs[:2], on_cuda.logprobs[:2], strict=True):
        assert a.keys() == b.keys() and list(a.values()) == pytest.approx(list(b.values()), abs=1e-5)


# ---- stop strings (engine.detokenizer) ---------------------------------------------------------


def test_find_stop_across_boundaries():
    assert find_stop("hello wor", 3, ["world"]) is None
    assert find_stop("hello world", 2, ["world"]) == (6, "world")
    assert find_stop("ab STOP cd", 2, ["STOP"]) is None  # ended before the new text
    assert find_stop("xxSTOPyySTO", 5, ["STO", "STOP"]) == (8, "STO")
