"""Tests of reasoning splitting (every split point, random chunkings), token counting and thinking budgets.

Text-level tests run the parser against a direct reference of the rules; token-level tests use the
demo tokenizer loaded as the engine loads it, and a fake "model" that always prefers one token.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.family import ThinkTags
from pipelines.reasoning import ReasoningParser, ReasoningTracker, Split, ThinkingBudget, parse

TAGS = ThinkTags()
OPEN, CLOSE = TAGS.open, TAGS.close

# (starts_in_reasoning, raw output, expected reasoning, expected answer, closed)
CASES = [
    (True, "Let me think.\n</think>\n\nThe answer is 4.", "Let me think.\n", "\n\nThe answer is 4.", True),
    (True, "<think>\nhm</think>ok", "\nhm", "ok", True),
    (True, "  <think>x</think>y", "x", "y", True),
    (True, "<think>", "", "", False),
    (True, "a<think>b</think>c", "a<think>b", "c", True),
    (True, "r</think>ans </think> and <think> more", "r", "ans </think> and <think> more", True),
    (True, "</thin </thinking> <thi x</think>done", "</thin </thinking> <thi x", "done", True),
    (True, "no closing tag <", "no closing tag <", "", False),
    (True, "<thinx", "<thinx", "", False),
    (True, "  \n", "  \n", "", False),
    (True, "", "", "", False),
    (True, "</think>", "", "", True),
    (False, "<think>\nhm</think>ok", "\nhm", "ok", True),
    (False, "  <think>x</think>y", "x", "y", True),
    (False, "The answer </think> is <think>4", "", "The answer </think> is <think>4", False),
    (False, "\n<thinking>x", "", "\n<thinking>x", False),
    (False, "<think>a </thin </thinking> <thi</think>b", "a </thin </thinking> <thi", "b", True),
    (False, "<think>r</think>a</think><think>b", "r", "a</think><think>b", True),
    (False, "<think>unclosed</thi", "unclosed</thi", "", False),
    (False, "x<think>y</think>z", "", "x<think>y</think>z", False),
    (False, "  <thi", "", "  <thi", False),
    (False, "  ", "", "  ", False),
    (False, "", "", "", False),
    (False, "</think>", "", "</think>", False),
]


def reference(raw: str, starts_in_reasoning: bool) -> Split:
    """The rules applied to a whole output directly (no streaming)."""
    rest = raw.lstrip()
    if rest.startswith(OPEN):
        body = rest[len(OPEN) :]
    elif starts_in_reasoning:
        body = raw
    else:
        return Split(text=raw)
    reasoning, found, answer = body.partition(CLOSE)
    return Split(reasoning, answer) if found else Split(reasoning=body)


def run_chunks(raw: str, cuts: list[int], starts_in_reasoning: bool) -> tuple[Split, ReasoningParser]:
    """Feed `raw` cut at `cuts`, checking losslessness after every piece; return the summed output."""
    parser = ReasoningParser(TAGS, starts_in_reasoning)
    total, fed = Split(), 0
    for a, b in itertools.pairwise([0, *cuts, len(raw)]):
        total += parser.feed(raw[a:b])
        fed += b - a
        emitted = len(parser.consumed) + len(total.reasoning) + len(total.text)
        assert emitted + parser.pending == fed == parser.raw_len
    total += parser.finish()
    assert parser.pending == 0
    return total, parser


def check_lossless(raw: str, out: Split, parser: ReasoningParser) -> None:
    consumed = parser.consumed
    if parser.closed:
        assert consumed.endswith(CLOSE)
        head = consumed[: -len(CLOSE)]
        assert raw == head + out.reasoning + CLOSE + out.text
        assert raw[parser.reasoning_start : parser.reasoning_end] == out.reasoning
        assert raw[parser.reasoning_end :].startswith(CLOSE)
    else:
        assert parser.reasoning_end is None
        assert raw == consumed + out.reasoning + out.text
    if parser.reasoning_start is not None:
        assert raw[: parser.reasoning_start] == consumed[: parser.reasoning_start]


# ---- parser: fixed cases, every split point ------------------------------------------------------
@pytest.mark.parametrize(("mode", "raw", "reasoning", "text", "closed"), CASES)
def test_one_shot_parse(mode, raw, reasoning, text, closed):
    assert parse(raw, TAGS, mode) == Split(reasoning, text) == reference(raw, mode)
    out, parser = run_chunks(raw, [], mode)
    assert out == Split(reasoning, text)
    assert parser.closed is closed
    assert parser.in_reasoning is (not closed and (mode or raw.lstrip().startswith(OPEN)))
    check_lossless(raw, out, parser)


@pytest.mark.parametrize(("mode", "raw", "reasoning", "text", "closed"), CASES)
def test_every_split_and_every_pair_of_splits(mode, raw, reasoning, text, closed):
    expected = Split(reasoning, text)
    for i, j in itertools.combinations_with_replacement(range(len(raw) + 1), 2):
        for cuts in ([i], [i, j]):
            out, parser = run_chunks(raw, cuts, mode)
            assert out == expected, (raw, cuts)
            assert parser.closed is closed
            check_lossless(raw, out, parser)


def test_char_by_char_holds_back_only_possible_tags():
    parser = ReasoningParser(TAGS, starts_in_reasoning=True)
    outs = [parser.feed(c) for c in "ab</thi"]
    assert "".join(o.reasoning for o in outs) == "ab"
    assert parser.pending == parser.close_prefix_len == 5
    assert parser.feed("s").reasoning == "</this"  # can no longer become the tag: released
    assert parser.pending == parser.close_prefix_len == 0
    assert parser.feed("</think").reasoning == ""
    assert parser.feed(">x") == Split("", "x")
    assert (parser.reasoning_start, parser.reasoning_end, parser.close_prefix_len) == (0, 8, 0)


def test_start_offsets_and_states():
    parser = ReasoningParser(TAGS, starts_in_reasoning=False)
    assert parser.feed(" \n<th") == Split() and not parser.in_reasoning and parser.pending == 5
    assert parser.close_prefix_len == 0  # not in the reasoning yet
    assert parser.feed("ink>r") == Split(reasoning="r")
    assert (parser.reasoning_start, parser.consumed, parser.in_reasoning) == (9, " \n<think>", True)
    assert parser.finish() == Split() and parser.in_reasoning and not parser.closed
    assert parser.finish() == Split()
    with pytest.raises(ValueError, match="after finish"):
        parser.feed("x")


def test_stray_open_tag_in_reasoning_mode_sets_reasoning_start():
    parser = ReasoningParser(TAGS, starts_in_reasoning=True)
    assert parser.reasoning_start == 0 and parser.in_reasoning
    assert parser.feed("\n<think>\nx") == Split(reasoning="\nx")
    assert parser.reasoning_start == 8


def test_other_tags_work_the_same():
    tags = ThinkTags(open="[R]", close="[/R]", forced_close="[/R] ")
    assert parse("  [R]a[/R b[/R]c[R]", tags, False) == Split("a[/R b", "c[R]")
    assert parse("[R]a[/R]b", tags, True) == Split("a", "b")
    with pytest.raises(ValueError, match="ThinkTags"):
        ReasoningParser("<think>", True)  # type: ignore[arg-type]


# ---- parser: properties --------------------------------------------------------------------------
PIECES = ["<", "/", "t", "h", "i", "n", "k", ">", "\n", " ", "a", OPEN, CLOSE, "</", "<th", "</thin"]
raw_text = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(raw=raw_text, mode=st.booleans(), data=st.data())
def test_random_chunking_matches_one_shot(raw, mode, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    out, parser = run_chunks(raw, cuts, mode)
    assert out == parse(raw, TAGS, mode) == reference(raw, mode)
    check_lossless(raw, out, parser)


# ---- tracker and budget: demo tokenizer, fake model ----------------------------------------------
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    pytest.importorskip("transformers")
    from bailing.demo.tokenizer import demo_tokenizer, ling_chat_template, write_tokenizer_files
    from engine.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(out, demo_tokenizer(), ling_chat_template(), eos_token="<|role_end|>")
    return load_tokenizer(out)


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def prompt(tok, opened: bool) -> list[int]:
    head = "<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>"
    return enc(tok, head + ("<think>\n" if opened else ""))


def generate(proc, vocab: int, prefer, steps: int, banned=()) -> list[int]:
    """A fake model: logits 0 except +1 on `prefer(step)` (and -inf on `banned`), greedy."""
    ids: list[int] = []
    for _ in range(steps):
        logits = torch.zeros(vocab)  # (V,)
        logits[prefer(len(ids))] = 1.0
        for b in banned:
            logits[b] = float("-inf")
        ids.append(int(proc(list(ids), logits).argmax()))
    return ids


def scripted(script: list[int], then: int):
    return lambda i: script[i] if i < len(script) else then


def budget(tok, mode: bool, b: int) -> ThinkingBudget:
    return ThinkingBudget(tok, prompt(tok, mode), TAGS, mode, b)


def test_tracker_counts_tokens_that_lie_inside_the_reasoning(tok):
    ids = enc(tok, "Let me think.\n</think>\n\nThe answer is 4.")
    tracker = ReasoningTracker(tok, prompt(tok, True), TAGS, True)
    counts = []
    for n in range(1, len(ids) + 1):
        tracker.update(ids[:n])
        counts.append((tracker.reasoning_tokens, tracker.close_prefix_len, tracker.closed))
    assert [tok.decode([i]) for i in ids[5:9]] == ["\n", "</", "think", ">"]
    assert counts[5:9] == [(6, 0, False), (6, 2, False), (6, 7, False), (6, 0, True)]
    assert counts[-1] == (6, 0, True) and not tracker.in_reasoning
    with pytest.raises(ValueError, match="whole output so far"):
        tracker.update(ids[:3])


def test_tracker_counts_partial_utf8_tokens(tok):
    ids = enc(tok, "🙂é</think>x")
    assert len(enc(tok, "🙂é")) == 4
    tracker = ReasoningTracker(tok, prompt(tok, True), TAGS, True)
    tracker.update(ids[:2])  # half an emoji: no text yet, but both tokens are in the reasoning
    assert tracker.reasoning_tokens == 2 and tracker.num_tokens == 2
    tracker.update(ids)
    assert tracker.reasoning_tokens == 4 and tracker.closed


def test_tracker_never_counts_without_an_opened_block(tok):
    ids = enc(tok, "The answer </think> is 4")
    tracker = ReasoningTracker(tok, prompt(tok, False), TAGS, False)
    tracker.update(ids)
    assert tracker.reasoning_tokens == 0 and not tracker.in_reasoning and not tracker.closed


@pytest.mark.parametrize("b", [1, 3, 7])
def test_budget_forces_the_close_after_b_reasoning_tokens(tok, b):
    me, forced = enc(tok, " me")[0], enc(tok, TAGS.forced_close)
    proc = budget(tok, True, b)
    ids = generate(proc, len(tok), lambda i: me, b + len(forced) + 3, banned=forced)
    assert ids == [me] * b + forced + [me] * 3  # forcing beats an earlier ban, then the model is free
    assert proc.forced_ids == forced and proc.tracker.reasoning_tokens == b and proc.tracker.closed
    assert parse(tok.decode(ids), TAGS, True) == Split(" me" * b, "\n\n" + " me" * 3)
    fresh = ReasoningTracker(tok, prompt(tok, True), TAGS, True)
    fresh.update(ids)
    assert fresh.reasoning_tokens == b


def test_forced_row_is_minus_inf_except_the_forced_id(tok):
    proc = budget(tok, True, 0)
    row = proc([], torch.full((len(tok),), float("-inf")))
    first = enc(tok, TAGS.forced_close)[0]
    assert row[first] == 0.0 and torch.isinf(row).sum() == len(tok) - 1


def test_budget_zero_forces_the_first_token(tok):
    me, forced = enc(tok, " me")[0], enc(tok, TAGS.forced_close)
    ids = generate(budget(tok, True, 0), len(tok), lambda i: me, len(forced) + 2)
    assert ids == [*forced, me, me]
    assert parse(tok.decode(ids), TAGS, True) == Split("", "\n\n me me")


@pytest.mark.parametrize("partial", [" <", "</", "</think"])
def test_budget_hit_while_the_model_writes_the_tag_forces_only_the_rest(tok, partial):
    """The budget's last tokens start `</think>`: only the rest of it is forced, so the reasoning
    stays within the budget (the tokens carrying the tag are not reasoning tokens)."""
    me, start = enc(tok, " me")[0], enc(tok, partial)
    b = 2 + len(start)
    proc = budget(tok, True, b)
    ids = generate(proc, len(tok), scripted([me, me, *start], me), 14)
    rest = enc(tok, TAGS.forced_close[len(partial.strip()) :])
    assert proc.forced_ids == rest and ids[: b + len(rest)] == [me, me, *start, *rest]
    assert proc.tracker.reasoning_tokens == 2 and proc.tracker.closed
    assert parse(tok.decode(ids), TAGS, True).reasoning == " me me" + (" " if partial == " <" else "")


def test_no_forcing_once_the_model_closed_itself(tok):
    me = enc(tok, " me")[0]
    script = [me, *enc(tok, "</think>\n\n"), me, me]
    proc = budget(tok, True, 5)  # more than the tokens of `me</think>`
    assert generate(proc, len(tok), scripted(script, me), 20) == script + [me] * (20 - len(script))
    assert proc.forced_ids is None and proc.tracker.reasoning_tokens == 1


def test_mode_false_counts_only_after_the_block_opens(tok):
    me, forced = enc(tok, " me")[0], enc(tok, TAGS.forced_close)
    opening = enc(tok, "<think>")
    proc = budget(tok, False, 2)
    ids = generate(proc, len(tok), scripted(opening, me), len(opening) + 2 + len(forced) + 1)
    assert ids == [*opening, me, me, *forced, me]
    assert parse(tok.decode(ids), TAGS, False) == Split(" me me", "\n\n me")


def test_mode_false_that_never_opens_is_never_forced(tok):
    me = enc(tok, " me")[0]
    proc = budget(tok, False, 0)
    assert generate(proc, len(tok), lambda i: me, 12) == [me] * 12
    assert proc.forced_ids is None and proc.tracker.reasoning_tokens == 0


def test_clones_are_independent(tok):
    me, forced = enc(tok, " me")[0], enc(tok, TAGS.forced_close)
    proc = budget(tok, True, 5)
    clone = proc.clone()
    assert clone is not proc and clone.tracker is not proc.tracker and clone.budget == 5
    a, b = [], []  # two samples in lockstep; the second closes itself early
    script_b = [me, *enc(tok, "</think>"), me, me, me, me]
    for step in range(11):
        for proc_, ids, want in ((proc, a, me), (clone, b, scripted(script_b, me)(step))):
            logits = torch.zeros(len(tok))  # (V,)
            logits[want] = 1.0
            ids.append(int(proc_(list(ids), logits).argmax()))
    assert a == [me] * 5 + forced + [me] * 2
    assert b == script_b + [me] * 3 and clone.forced_ids is None
    assert proc.clone().tracker.num_tokens == 0


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3", None])
def test_budget_must_be_a_non_negative_int(tok, bad):
    with pytest.raises(ValueError, match="thinking_budget"):
        budget(tok, True, bad)


def test_budget_after_an_incomplete_character_still_counts_exactly(tok):
    """The budget hits while half an emoji is held back: the forced `</` token then carries the
    replacement characters, so it straddles the tag start and does not count as reasoning."""
    half = enc(tok, "🙂")[:1]
    proc = budget(tok, True, 3)
    ids = generate(proc, len(tok), scripted([enc(tok, " me")[0], enc(tok, " me")[0], half[0]], 0), 12)
    forced = enc(tok, TAGS.forced_close)
    assert ids[3 : 3 + len(forced)] == forced
    fresh = ReasoningTracker(tok, prompt(tok, True), TAGS, True)
    fresh.update(ids)
    assert fresh.reasoning_tokens == 3 and fresh.closed
