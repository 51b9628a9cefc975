"""Text segmentation for speech: breaks at sentence-ending punctuation (CJK too) once enough text is
gathered, numbers' "." kept, newlines, the 50-unit cut with short clauses merged, incremental feeding
equal to the whole text, and the runaway guard as a step limit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.speech_text import (
    MAX_LENGTH,
    Segmenter,
    cut,
    max_patches,
    segments,
    semantic_length,
)


def test_cjk_sentences_break_at_their_punctuation():
    text = "今天天气很好，我们一起去公园散步吧。你觉得怎么样？我觉得非常好！"
    assert segments(text) == ["今天天气很好，我们一起去公园散步吧。", "你觉得怎么样？我觉得非常好！"]


def test_short_text_is_not_broken_before_the_minimum():
    # 12 characters before the first break, 8 after: "你好。" and "谢谢！" are too short alone
    assert segments("你好。谢谢！") == ["你好。谢谢！"]
    first = "This is the first one."
    assert segments(first + " Ok. Then the rest.") == [first, "Ok. Then the rest."]


def test_english_sentences_and_numbers():
    text = (
        "Hello there, this is a test of the speech system. The value is 3.14 and it works! Version 2. Next."
    )
    out = segments(text)
    assert out[0] == "Hello there, this is a test of the speech system."
    assert out[1] == "The value is 3.14 and it works!"  # the decimal point is no break
    assert "Version 2. Next." in out  # "2." ends a number: no break after it


def test_abbreviations_stay_whole_when_cutting():
    long = "The U.S.A. and the U.K. agreed. " + "word " * 60
    pieces = cut(long)
    assert pieces[0].startswith("The U.S.A. and the U.K. agreed.")
    assert all(semantic_length(p) <= MAX_LENGTH for p in pieces)


def test_newlines():
    # after CJK a comma, after a letter a full stop
    assert segments("第一行的内容比较长一些\n第二行\n") == ["第一行的内容比较长一些，", "第二行，"]
    assert segments("第一行\n第二行\n") == ["第一行，第二行，"]  # too short to break
    english = ["a line of english text.", "next line here."]
    assert segments("a line of english text\nnext line here\n") == english
    assert segments("word 7\n42\n") == ["word 7 42"]  # else a space


def test_long_text_is_cut_to_the_max_length():
    text = "这是一个非常长的句子" * 12 + "。"
    out = segments(text)
    assert len(out) > 1 and "".join(out) == text
    assert all(semantic_length(s) <= MAX_LENGTH for s in out)
    words = " ".join(["word"] * 130) + "."
    out = segments(words)
    assert [semantic_length(s) for s in out] == [50, 50, 30]


def test_short_clauses_join_their_neighbour():
    text = "好的，我们现在开始讨论这个问题，" + "然后再看看别的事情" * 5 + "。"
    assert cut(text) == ["好的，我们现在开始讨论这个问题，", "然后再看看别的事情" * 5 + "。"]


def test_punctuation_only_says_nothing():
    assert segments("...!!!，，。") == [] and cut("？？") == []
    assert segments("") == []


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_feeding_in_pieces_equals_the_whole_text(size):
    text = "今天天气很好，我们一起去公园散步吧。Hello there, it is 3.5 degrees!\nShort.\n好的。最后一句没标点"
    segmenter, out = Segmenter(), []
    for i in range(0, len(text), size):
        out += segmenter.feed(text[i : i + size])
    assert out + segmenter.flush() == segments(text)


def test_segments_come_out_as_soon_as_they_end():
    segmenter = Segmenter()
    assert segmenter.feed("今天天气很好，我们一起去") == []
    assert segmenter.feed("公园散步吧。你") == ["今天天气很好，我们一起去公园散步吧。"]
    assert segmenter.flush() == ["你"]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abc 你好。，.!?\n3", max_size=80), st.integers(1, 9))
def test_feeding_never_depends_on_the_cuts(text, size):
    segmenter, out = Segmenter(), []
    for i in range(0, len(text), size):
        out += segmenter.feed(text[i : i + size])
    assert out + segmenter.flush() == segments(text)


def test_runaway_guard():
    spp = 0.32  # seconds per talker patch (the real model)
    assert max_patches("短", spp) == math.ceil(2.0 / spp)  # at least 2 s
    text = "字" * 55
    assert max_patches(text, spp) == math.ceil(55 / (16000 / 5818) / spp)
    assert max_patches("x", 100.0) == 1
