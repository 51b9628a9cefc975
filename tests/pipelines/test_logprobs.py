"""Logprobs on the worker side (`pipelines.logprobs` through the `Presenter`) on the demo byte-level BPE
tokenizer and hand-made engine outputs: token texts and exact bytes, top alternatives cut to the asked
count, reasoning tokens and the ending EOS left out, answer tokens released as soon as they are known;
and their trip through a stream event."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from bailing.demo.tokenizer import demo_tokenizer
from engine.outputs import RequestOutput
from engine.sampling_params import MAX_LOGPROBS as ENGINE_MAX_LOGPROBS
from models.family import ThinkTags
from pipelines.logprobs import TokenTexts
from pipelines.output import Presenter, ReasoningMode
from pipelines.protocol import MAX_LOGPROBS, Event, EventType, TokenLogprob, TopLogprob

THINK = ThinkTags()


@pytest.fixture(scope="module")
def tok():
    return PreTrainedTokenizerFast(tokenizer_object=demo_tokenizer())


def entry(token: int, k: int, among: bool = True) -> dict[int, float]:
    """An engine logprob dict: k made-up top ids (`token` first if `among`), then `token` if not."""
    top = [token, *range(900, 900 + k - 1)] if among else list(range(900, 900 + k))
    out = {t: -0.5 - i for i, t in enumerate(top)}
    out.setdefault(token, -7.25)
    return out


def run(tok, ids: list[int], mode: ReasoningMode | None, k: int, stop_token: bool = False):
    """Feed `ids` one token per snapshot, as the engine does; returns the logprobs of each delta."""
    p = Presenter(1, mode, tok, [], logprobs=k)
    got, text = [], ""
    for n in range(1, len(ids) + 1):
        last = n == len(ids)
        new = tok.decode(ids[:n], skip_special_tokens=True)
        out = RequestOutput(
            "r",
            None,
            [],
            token_ids=ids[:n],
            text=new,
            new_token_ids=[ids[n - 1]],
            new_text=new[len(text) :],
            logprobs=[entry(t, k, among=i % 2 == 0) for i, t in enumerate(ids[:n])],
            finish_reason=("stop" if stop_token else "length") if last else None,
            stop_reason=ids[-1] if last and stop_token else None,
        )
        text = new
        deltas = p.deltas(out)
        got.append([t for d in deltas for t in d.logprobs])
    return got


def test_max_logprobs_mirrors_the_engine():
    assert MAX_LOGPROBS == ENGINE_MAX_LOGPROBS


def test_token_texts_give_exact_bytes_even_for_part_of_a_character(tok):
    ids = tok.encode("héllo 你好 world")
    texts = TokenTexts(tok)
    pieces = [texts.get(i) for i in ids]
    assert b"".join(raw for _, raw in pieces) == "héllo 你好 world".encode()
    assert any(text == "\ufffd" and len(raw) < 3 for text, raw in pieces)  # half of a CJK character
    assert all(text == raw.decode() for text, raw in pieces if text != "\ufffd")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert texts.get(eos) == ("<|endoftext|>", b"<|endoftext|>")


def test_every_token_comes_with_its_top_alternatives(tok):
    ids = tok.encode("The quick brown fox")
    got = run(tok, ids, None, k=3)
    assert [len(step) for step in got] == [1] * len(ids)  # each token in the delta it arrives with
    flat = [t for step in got for t in step]
    assert [t.token_id for t in flat] == ids
    assert "".join(t.token for t in flat) == "The quick brown fox"
    for i, t in enumerate(flat):
        assert len(t.top) == 3 and [a.logprob for a in t.top] == [-0.5, -1.5, -2.5]
        if i % 2 == 0:  # sampled as the most likely
            assert t.top[0].token_id == t.token_id and t.logprob == -0.5
        else:  # sampled outside the top 3: its own logprob, not among the alternatives
            assert t.token_id not in [a.token_id for a in t.top] and t.logprob == -7.25


def test_zero_alternatives_give_the_sampled_token_only(tok):
    ids = tok.encode("a b")
    flat = [t for step in run(tok, ids, None, k=0) for t in step]
    assert [t.token_id for t in flat] == ids and all(t.top == () for t in flat)


def test_the_eos_that_ended_the_output_gets_none(tok):
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    ids = [*tok.encode("Hi there"), eos]
    flat = [t for step in run(tok, ids, None, k=1, stop_token=True) for t in step]
    assert [t.token_id for t in flat] == ids[:-1]


def test_reasoning_tokens_get_none_and_the_answer_s_come_once_the_block_closed(tok):
    ids = tok.encode("think more</think>The answer")  # think, more, </, think, >, The, answer
    got = run(tok, ids, ReasoningMode(THINK, starts_in_reasoning=True), k=2)
    closed = tok.convert_ids_to_tokens(ids).index(">")
    assert all(step == [] for step in got[: closed + 1])
    flat = [t for step in got for t in step]
    assert "".join(t.token for t in flat) == "The answer"
    assert [t.token_id for t in flat] == ids[closed + 1 :]


def test_an_output_that_only_looked_like_the_opening_tag_is_answer_at_its_end(tok):
    ids = tok.encode("<th")
    got = run(tok, ids, ReasoningMode(THINK, starts_in_reasoning=False), k=1)
    assert all(step == [] for step in got[:-1])  # it could still have become `<think>`
    assert "".join(t.token for t in got[-1]) == "<th"


def test_an_unclosed_block_has_no_logprobs(tok):
    ids = tok.encode("still thinking about it")
    got = run(tok, ids, ReasoningMode(THINK, starts_in_reasoning=True), k=2)
    assert all(step == [] for step in got)


def test_logprobs_round_trip_through_a_stream_event():
    half = TopLogprob(7, "\ufffd", -1.5, b"\xe4\xbd")
    lps = (
        TokenLogprob(7, "\ufffd", -1.5, b"\xe4\xbd", (half, TopLogprob(8, "x", -2.0, b"x"))),
        TokenLogprob(9, "é", -0.25, "é".encode()),
    )
    ev = Event(seq=3, type=EventType.DELTA, text="é", logprobs=lps)
    assert Event.decode(ev.encode()) == ev
    assert Event.decode(Event(seq=4, type=EventType.DELTA, text="x").encode()).logprobs is None
