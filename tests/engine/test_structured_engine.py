"""Constrained decoding in the engine: masks applied per row in the batched sampler, prefetched during
the forward, with n samples, stop strings and seeds behaving as without a grammar."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from llguidance import LLMatcher

from engine import LLM, SamplingParams
from engine.diffusion.constrained import constrained_step
from engine.diffusion.decoders import make_decoder
from engine.diffusion.params import DiffusionParams
from engine.structured.masks import BiasTable, MaskPrefetcher

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
GRAMMAR = LLMatcher.grammar_from_json_schema(SCHEMA, overrides={"whitespace_flexible": False})


@pytest.fixture(scope="module")
def llm(demo_ling):
    return LLM(demo_ling, max_num_seqs=64)


def params(llm: LLM, seed: int, **kw) -> SamplingParams:
    kw = {"max_tokens": 96, "temperature": 1.0, **kw}
    constraint = llm.engine.structured.get().constraint(GRAMMAR)
    return SamplingParams(seed=seed, constraint=constraint, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_bias_is_zero_exactly_on_the_allowed_bits(dtype):
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-(2**31), 2**31 - 1, (3, 5), dtype=torch.int64, generator=g).to(torch.int32)
    bias = BiasTable().bias(words, 150, torch.empty(0, dtype=dtype))
    assert bias.shape == (3, 150) and bias.dtype == dtype
    for r in range(3):
        for t in range(150):
            allowed = bool((int(words[r, t // 32]) >> (t % 32)) & 1)
            assert float(bias[r, t]) == (0.0 if allowed else float("-inf"))


class _Fixed:
    """A constraint stand-in whose next mask allows exactly `allowed` (no prefetch under way)."""

    def __init__(self, allowed: list[int], words: int) -> None:
        self.active, self.error, self.pending = True, None, None
        self.allowed, self.words = allowed, words


def test_apply_masks_only_the_constrained_rows(monkeypatch):
    prefetcher = MaskPrefetcher(40)

    def fill(_executor, matchers, out):
        out.zero_()
        for c, j in matchers:
            for t in c.allowed:
                out[j, t // 32] |= 1 << (t % 32)

    monkeypatch.setattr("engine.structured.masks._fill_par", fill)
    logits = torch.randn(3, 40)
    a, b = _Fixed([1, 33], 2), _Fixed([0], 2)
    a.matcher, b.matcher = a, b
    out = prefetcher.apply(logits, [a, None, b])
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [1, 33]
    assert torch.equal(out[1], logits[1])
    assert torch.isfinite(out[2]).nonzero().flatten().tolist() == [0]
    assert torch.equal(out[0, [1, 33]], logits[0, [1, 33]])
    everyone = prefetcher.apply(logits[:1], [a])  # every row constrained: the plain add
    assert torch.isfinite(everyone[0]).nonzero().flatten().tolist() == [1, 33]
    assert prefetcher.computed == 3
    prefetcher.close()


def test_seeded_samples_follow_the_schema_and_end_at_eos(llm):
    outs = llm.generate(["Describe a person:"] * 12, [params(llm, seed) for seed in range(12)])
    for out in outs:
        assert out.finish_reason == "stop", (out.text, out.finish_reason)
        jsonschema.validate(json.loads(out.text), SCHEMA)
    assert len({o.text for o in outs}) > 1
    masks = llm.engine.structured.get().masks
    assert masks.prefetched > masks.computed  # most masks were ready before the sampler asked


def test_a_row_decodes_the_same_alone_and_in_a_batch(llm):
    alone = llm.generate(["Describe a person:"], [params(llm, 7)])[0]
    crowd = llm.generate(
        ["Hi", "Describe a person:", "x"],
        [params(llm, 1), params(llm, 7), SamplingParams(max_tokens=9, seed=3)],
    )
    assert crowd[1].token_ids == alone.token_ids


def test_n_samples_each_follow_the_grammar(llm):
    out = llm.generate(["Describe a person:"], [params(llm, 5, n=3)])[0]
    assert len(out.choices) == 3
    for choice in out.choices:
        jsonschema.validate(json.loads(choice.text), SCHEMA)


def test_stop_strings_still_cut_the_output(llm):
    full = llm.generate(["Describe a person:"], [params(llm, 11)])[0].text
    cut = llm.generate(["Describe a person:"], [params(llm, 11, stop=[","])])[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(",")]


def test_a_grammar_the_output_left_fails_only_its_request(llm):
    class OpensOnJunk:  # a gate whose text before the constrained part cannot be JSON
        def __call__(self, ids):
            return "junk" if ids else None

        def clone(self):
            return OpensOnJunk()

    bad = SamplingParams(
        max_tokens=8,
        temperature=1.0,
        seed=1,
        constraint=llm.engine.structured.get().constraint(GRAMMAR, OpensOnJunk()),
    )
    outs = llm.generate(["Hi", "Describe a person:"], [bad, params(llm, 3)])
    assert outs[0].finish_reason == "error" and "structured output" in outs[0].stop_reason
    jsonschema.validate(json.loads(outs[1].text), SCHEMA)


def test_logprobs_stay_those_of_the_raw_model(llm):
    fixed = llm.generate(["Describe a person:"], [params(llm, 0, max_tokens=1, logprobs=0, temperature=0)])[0]
    assert fixed.text.startswith("{")  # the schema allows only tokens that open the object
    token = fixed.token_ids[0]
    raw = llm.logits(llm.engine.encode("Describe a person:"))[-1].log_softmax(-1)  # (V,)
    assert fixed.logprobs[0][token] == pytest.approx(float(raw[token]), abs=1e-4)


def test_a_diffusion_block_commits_left_to_right_up_to_the_first_refused_token(llm):
    so = llm.engine.structured.get()
    constraint = so.constraint('start: "a" "b" "c"\n')
    a, b, c, z = (so.tokenizer.tokenize_str(ch)[0] for ch in "abcz")
    vocab, mask = llm.engine.model.runtime.vocab_size, 5
    params = DiffusionParams(decoder="threshold", threshold=0.0, block_length=4, mask_token_id=mask)
    decoder = make_decoder(params)
    block = torch.full((4,), mask)

    def step(peaks: list[int]) -> list[int]:
        logits = torch.zeros(4, vocab)
        logits[torch.arange(4), torch.tensor(peaks)] = 30.0  # the decoder chooses every masked row
        commit = constrained_step(decoder, constraint, logits, block, (0.0, None, None), None)
        block[commit.positions] = commit.tokens
        return commit.positions.tolist()

    assert step([a, b, z, c]) == [0, 1]  # z is refused where it lands: the run stops before it
    assert step([a, b, c, c]) == [2]  # the grammar is complete after c: the last c is refused
    assert step([a, b, c, c]) == [3]  # only the end of sequence may follow
    assert block[:3].tolist() == [a, b, c] and int(block[3]) in llm.engine.eos_token_ids
    assert constraint.error is None
