"""The diffusion decoders against their formulas (spec llada2.md steps 1-3, dllm.md B.3)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.diffusion import (
    CreditDecoder,
    DiffusionParams,
    HierarchyDecoder,
    LLaDA2Decoder,
    ThresholdDecoder,
    llada2_schedule,
    make_decoder,
    sample_tokens,
)
from engine.errors import RequestError

MASK = 15  # the mask id of these tests (a vocabulary entry, so a model could predict it)
V = 16


def rows(*specs: tuple[int, float]) -> torch.Tensor:
    """Logits [B, V]: row i puts probability c on token t and spreads 1 - c evenly over the rest."""
    out = torch.empty(len(specs), V, dtype=torch.float64)
    for i, (t, c) in enumerate(specs):
        out[i] = math.log((1 - c) / (V - 1))
        out[i, t] = math.log(c)
    return out.float()


def tied(n_ways: int) -> torch.Tensor:
    """One logits row [V] whose softmax is exactly 1/n_ways on tokens 0..n-1 (argmax: token 0)."""
    row = torch.full((V,), float("-inf"))
    row[:n_ways] = 0.0
    return row


def params(**kw) -> DiffusionParams:
    return DiffusionParams(mask_token_id=MASK, **kw)


def all_masked(b: int) -> torch.Tensor:
    return torch.full((b,), MASK)


def decode_block(decoder, logits: torch.Tensor, block: torch.Tensor) -> list[list[int]]:
    """Run a block to completion with fixed logits; returns the committed positions per step."""
    decoder.start_block()
    history = []
    while (block == MASK).any():
        commit = decoder.step(logits, block)
        block[commit.positions] = commit.tokens
        history.append(commit.positions.tolist())
        assert len(history) <= block.numel()
    return history


# --- DiffusionParams -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"block_length": 0}, "block_length"),
        ({"block_length": 1025}, "block_length"),
        ({"block_length": True}, "block_length"),
        ({"steps": 0}, "steps"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"decoder": "greedy"}, "decoder"),
        ({"low_threshold": 0.3}, "low_threshold"),  # only hierarchy has one
        ({"decoder": "hierarchy", "threshold": 0.5, "low_threshold": 0.6}, "low_threshold"),
        ({"decoder": "hierarchy", "low_threshold": 1.2}, "low_threshold"),
        ({"eos_early_stop": 1}, "eos_early_stop"),
        ({"mask_token_id": -1}, "mask_token_id"),
        ({"eos_token_id": "2"}, "eos_token_id"),
        ({"credit_alpha": -1.0}, "credit_alpha"),
        ({"decay_beta": 1.5}, "decay_beta"),
        ({"boost_gamma": -0.2}, "boost_gamma"),
    ],
)
def test_invalid_params_name_the_field(kwargs, field):
    with pytest.raises(RequestError, match=field):
        DiffusionParams(**kwargs)


def test_param_defaults():
    p = DiffusionParams()
    assert (p.block_length, p.steps, p.threshold, p.decoder) == (32, 32, 0.95, "llada2")
    assert (p.credit_alpha, p.decay_beta, p.boost_gamma) == (0.7, 0.8, 0.2)
    assert p.low_threshold is None and DiffusionParams(block_length=1024).block_length == 1024
    assert DiffusionParams(decoder="hierarchy").low_threshold == 0.4
    assert DiffusionParams(decoder="hierarchy", threshold=0.3).low_threshold == 0.3  # capped at τ_high


def test_make_decoder_needs_the_mask_id_and_picks_the_named_class():
    with pytest.raises(ValueError, match="mask_token_id"):
        make_decoder(DiffusionParams())
    kinds = {"llada2": LLaDA2Decoder, "threshold": ThresholdDecoder, "hierarchy": HierarchyDecoder}
    kinds["credit"] = CreditDecoder
    for name, cls in kinds.items():
        assert type(make_decoder(params(decoder=name))) is cls


def test_step_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="block_ids"):
        make_decoder(params()).step(torch.zeros(4, V), all_masked(3))


# --- sampler ---------------------------------------------------------------------------------------


def test_greedy_sampling_is_argmax_with_its_softmax_probability():
    logits = torch.randn(5, V, generator=torch.Generator().manual_seed(0))
    tokens, conf = sample_tokens(logits, 0.0)
    assert torch.equal(tokens, logits.argmax(-1))
    torch.testing.assert_close(conf, logits.softmax(-1).max(-1).values)


def test_sampling_confidence_is_under_the_filtered_distribution():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]]).repeat(64, 1)
    tokens, conf = sample_tokens(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}  # top-k 2 never draws token 2
    want = torch.where(tokens == 0, 0.625, 0.375)  # 0.5 / 0.8 and 0.3 / 0.8
    torch.testing.assert_close(conf, want)
    tokens, conf = sample_tokens(logits, 0.7, top_p=0.4, generator=torch.Generator().manual_seed(0))
    assert tokens.eq(0).all() and conf.eq(1.0).all()  # the nucleus is the best token alone


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(8, V, generator=torch.Generator().manual_seed(1))
    a = sample_tokens(logits, 0.9, generator=torch.Generator().manual_seed(7))
    b = sample_tokens(logits, 0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"temperature": -1.0}, "temperature"), ({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p")],
)
def test_sampler_rejects_bad_settings(kwargs, field):
    with pytest.raises(RequestError, match=field):
        sample_tokens(torch.zeros(1, V), **kwargs)


# --- llada2 ----------------------------------------------------------------------------------------


def test_llada2_schedule_examples():
    assert llada2_schedule(8, 24) == [1] * 8 + [0] * 16
    assert llada2_schedule(8, 4) == [2, 2, 2, 2]
    assert llada2_schedule(10, 4) == [3, 3, 2, 2]
    assert sum(llada2_schedule(32, 5)) == 32


def test_llada2_steps_are_capped_at_gen_length():
    decoder = make_decoder(params(block_length=8, steps=32), gen_length=24)
    assert decoder.schedule == [1] * 8 + [0] * 16
    assert make_decoder(params(block_length=8, steps=4), gen_length=24).schedule == [2, 2, 2, 2]


def test_llada2_threshold_is_strict():
    """conf == τ exactly is not above τ: H is empty, so only the top-k_s = 1 fallback commits."""
    logits = torch.stack([tied(2), tied(2), tied(2), tied(4)])  # confidences 0.5, 0.5, 0.5, 0.25
    commit = make_decoder(params(block_length=4, steps=4, threshold=0.5)).step(logits, all_masked(4))
    assert len(commit.positions) == 1 and commit.confidences.tolist() == [0.5]
    commit = make_decoder(params(block_length=4, steps=4, threshold=0.4999)).step(logits, all_masked(4))
    assert commit.positions.tolist() == [0, 1, 2]
    # dInfer's rule is >= min(τ, max c - 1e-5): it takes all three at τ = 0.5
    commit = make_decoder(params(decoder="threshold", threshold=0.5)).step(logits, all_masked(4))
    assert commit.positions.tolist() == [0, 1, 2]


def test_llada2_commits_all_of_h_or_falls_back_to_top_k():
    logits = rows((3, 0.99), (4, 0.3), (5, 0.98), (6, 0.5), (7, 0.2), (8, 0.6), (9, 0.97), (1, 0.4))
    decoder = make_decoder(params(block_length=8, steps=4, threshold=0.9))  # k_s = 2
    commit = decoder.step(logits, all_masked(8))
    assert commit.positions.tolist() == [0, 2, 6]  # |H| = 3 >= 2: all of H
    assert commit.tokens.tolist() == [3, 5, 9]
    block = all_masked(8)
    block[[0, 2, 6]] = torch.tensor([3, 5, 9])
    commit = decoder.step(logits, block)
    assert commit.positions.tolist() == [3, 5]  # H empty among the masked: the top-2 (0.6, 0.5)
    torch.testing.assert_close(commit.confidences, torch.tensor([0.5, 0.6]))


def test_llada2_zero_k_commits_nothing_below_threshold():
    logits = rows((3, 0.3), (4, 0.2), (5, 0.95), (6, 0.25))
    decoder = make_decoder(params(block_length=4, steps=8, threshold=0.9))  # [1, 1, 1, 1, 0, 0, 0, 0]
    block = all_masked(4)
    block[2] = 5
    for _ in range(4):
        assert len(decoder.step(logits, block).positions) == 1
    assert decoder.step(logits, block).positions.numel() == 0  # k_s = 0 and nothing above τ
    block[2] = MASK
    assert decoder.step(logits, block).positions.tolist() == [2]  # k_s = 0 still commits H


@pytest.mark.parametrize("name", ["llada2", "threshold", "hierarchy", "credit"])
def test_threshold_one_commits_one_token_per_step(name):
    logits = torch.randn(8, V, generator=torch.Generator().manual_seed(3))
    logits[:, MASK] = -10.0  # keep the mask id out of the proposals for the dInfer decoders
    extra = {"low_threshold": 1.0} if name == "hierarchy" else {}
    decoder = make_decoder(params(decoder=name, block_length=8, steps=8, threshold=1.0, **extra))
    block = all_masked(8)
    block[[2, 5]] = torch.tensor([1, 2])  # two positions already decided (e.g. the prompt's tail)
    history = decode_block(decoder, logits, block)
    assert [len(h) for h in history] == [1] * 6
    assert sorted(p for h in history for p in h) == [0, 1, 3, 4, 6, 7]
    if name != "credit":  # fixed logits: the most confident position goes first
        conf = logits.softmax(-1).max(-1).values
        order = [h[0] for h in history]
        assert conf[order].tolist() == sorted(conf[order].tolist(), reverse=True)


def test_mask_id_predictions_are_committed_only_by_llada2():
    logits = rows((MASK, 0.99), (3, 0.6), (4, 0.3), (5, 0.2))
    commit = make_decoder(params(block_length=4, steps=4, threshold=0.9)).step(logits, all_masked(4))
    assert commit.positions.tolist() == [0] and commit.tokens.tolist() == [MASK]
    for name in ("threshold", "hierarchy", "credit"):
        commit = make_decoder(params(decoder=name, threshold=0.9)).step(logits, all_masked(4))
        assert commit.positions.tolist() == [1] and commit.tokens.tolist() == [3], name
    only_mask = rows((MASK, 0.9), (MASK, 0.8))
    commit = make_decoder(params(decoder="threshold")).step(only_mask, all_masked(2))
    assert commit.positions.numel() == 0


# --- hierarchy -------------------------------------------------------------------------------------


def test_hierarchy_takes_one_medium_token_per_masked_run_plus_the_high_ones():
    # runs of masked positions: {0, 1, 2}, {4, 5}, {7}; positions 3 and 6 are decided
    block = all_masked(8)
    block[[3, 6]] = torch.tensor([1, 2])
    decoder = make_decoder(params(decoder="hierarchy", threshold=0.9, low_threshold=0.4))
    logits = rows((1, 0.5), (2, 0.7), (3, 0.6), (4, 0.99), (5, 0.45), (6, 0.3), (7, 0.99), (8, 0.8))
    assert decoder.step(logits, block).positions.tolist() == [1, 4, 7]  # pos 3 is decided: ignored
    logits = rows((1, 0.95), (2, 0.97), (3, 0.6), (4, 0.1), (5, 0.3), (6, 0.35), (7, 0.1), (8, 0.2))
    assert decoder.step(logits, block).positions.tolist() == [0, 1]  # both high; runs 2, 3 below τ_low
    logits = rows((1, 0.2), (2, 0.3), (3, 0.25), (4, 0.1), (5, 0.35), (6, 0.3), (7, 0.1), (8, 0.2))
    assert decoder.step(logits, block).positions.tolist() == [4]  # nothing passes: the global top-1


def test_hierarchy_run_ties_take_the_first_position():
    logits = torch.stack([tied(2), tied(2), tied(4), tied(2)])  # 0.5, 0.5, 0.25, 0.5
    decoder = make_decoder(params(decoder="hierarchy", threshold=0.9, low_threshold=0.4))
    assert decoder.step(logits, all_masked(4)).positions.tolist() == [0]


# --- credit ----------------------------------------------------------------------------------------


def test_credit_accumulates_decays_and_fuses():
    """C ← 0.8 C (t > 0), + p_top1^0.2 at the argmax; ℓ' = ℓ + 0.7 log(1 + C), hand-computed."""
    probs = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]
    logits = torch.tensor(probs, dtype=torch.float64).log().float()  # (2, 3)
    decoder = make_decoder(DiffusionParams(decoder="credit", threshold=0.99, mask_token_id=7))
    decoder.start_block()
    boost = [0.6**0.2, 0.5**0.2]
    total = 0.0
    for t in range(4):
        commit = decoder.step(logits, torch.tensor([7, 7]))  # nothing written: both stay masked
        total = 0.8 * total + 1.0  # Σ_j 0.8^j over the steps so far
        want = torch.zeros(2, 3, dtype=torch.float64)
        want[0, 0], want[1, 1] = boost[0] * total, boost[1] * total
        torch.testing.assert_close(decoder.credit, want.float())
        fused = [
            probs[0][0]
            * (1 + want[0, 0].item()) ** 0.7
            / (probs[0][0] * (1 + want[0, 0].item()) ** 0.7 + 0.4),
            probs[1][1]
            * (1 + want[1, 1].item()) ** 0.7
            / (probs[1][1] * (1 + want[1, 1].item()) ** 0.7 + 0.5),
        ]
        best = 0 if fused[0] >= fused[1] else 1
        assert commit.positions.tolist() == [best], f"step {t}"
        assert commit.confidences.item() == pytest.approx(fused[best], abs=1e-6)
    decoder.start_block()
    assert decoder.credit is None


def test_credit_skips_decided_positions():
    logits = rows((3, 0.6), (4, 0.5))
    decoder = make_decoder(params(decoder="credit", threshold=0.99))
    decoder.start_block()
    decoder.step(logits, torch.tensor([MASK, 2]))
    assert decoder.credit[1].abs().sum() == 0 and decoder.credit[0, 3] == pytest.approx(0.6**0.2)


def test_start_block_resets_the_step_counter():
    logits = rows((3, 0.3), (4, 0.2))
    decoder = make_decoder(params(block_length=2, steps=4))  # [1, 1, 0, 0]
    for _ in range(3):
        decoder.step(logits, all_masked(2))
    assert decoder.step(logits, all_masked(2)).positions.numel() == 0
    decoder.start_block()
    assert decoder.step(logits, all_masked(2)).positions.tolist() == [0]
