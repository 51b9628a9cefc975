"""The glyph text a prompt quotes (`glyph.extract_glyph_text`) against upstream Ming 2.0's
`get_text_from_prompt` (processing_bailingmm2.py at 2a0c02a): every expected value below was computed
by running the upstream function out of tree on the prompt beside it (quote styles and their order,
the last span, empty spans, removal words, single quotes turned into double ones or not)."""

from __future__ import annotations

import pytest

from models.ming.generation.glyph import extract_glyph_text

UPSTREAM = [
    ('A red fox in the snow', ''),
    ('A poster with the title "Summer Sale"', 'Text "Summer Sale". '),
    ('A shop sign reading ‘Bakery’', 'Text "Bakery". '),
    ('A book cover titled “The Long Road”', 'Text "The Long Road". '),
    ('Two signs: "Open" and "Closed"', 'Text "Closed". '),
    ('A label “first” next to "second"', 'Text "first". '),
    ('Remove the text "Sale" from the image', ''),
    ('Write "Sale" and remove the background', 'Text "Sale". '),
    ('Remove "A" and add "B"', 'Text "B". '),
    ('DELETE "watermark"', ''),
    ('Erased background, then the text "Hi"', ''),
    ("A sign that says 'OPEN'", 'Text "OPEN". '),
    ("The cat's favourite toy", ''),
    ("don't won't", 'Text "t won". '),
    ("A banner 'this is a very long sentence here' on a wall", ''),
    ("写上'百灵大模型'", 'Text "百灵大模型". '),
    ("写上'百灵大模型百灵大'", ''),
    ('A blank sign ""', ''),
    ('"A" and ""', ''),
    ('a "quote that never ends', ''),
    ('a "multi\nline" sign', ''),
    ('生成一张海报，标题为“百灵 Ming”', 'Text "百灵 Ming". '),
    ('It\'s a "test"', 'Text "test". '),
    ('"Sale" delete the rest', 'Text "Sale". '),
    ('erase ‘old’', ''),
    ('remove “A” ‘B’', 'Text "A". '),
    ('"He said ‘hi’"', 'Text "hi". '),
    ('“abc"', ''),
    ('Text with emoji "🎉 Party"', 'Text "🎉 Party". '),
    ("'a' and 'b'", 'Text "b". '),
    ("remove 'logo'", ''),
    ('Replace "old" with "new"', 'Text "new". '),
    ('İ remove "x"', ''),
    ('“hello', ''),
    ('" "', 'Text " ". '),
    ("'aaaaaaaaaaaaaaaaaaaa'", ''),
    ("'aaaaaaaaaaaaaaaaaaa'", 'Text "aaaaaaaaaaaaaaaaaaa". '),
    ('<IMAGE>Change the text to "Ming"', 'Text "Ming". '),
    ('Removed "a" "b"', 'Text "b". '),
    ('A sign 「招牌」', ''),
    ('Make it say "Hello <color-1> World"', 'Text "Hello <color-1> World". '),
    ('The word ‘café’ in neon, and “bar” below', 'Text "bar". '),
    ('REMOVE the logo, keep ‘Brand’', ''),
    ('Please eraser "x"', ''),
    ('Quote \'a\' then "b"', 'Text "b". '),
]  # fmt: skip


@pytest.mark.parametrize(("prompt", "text"), UPSTREAM)
def test_the_glyph_text_equals_upstreams(prompt, text):
    assert extract_glyph_text(prompt) == text


def test_the_table_covers_every_rule():
    texts = dict(UPSTREAM)
    assert texts['Two signs: "Open" and "Closed"'] == 'Text "Closed". '  # the last span
    assert texts['A label “first” next to "second"'] == 'Text "first". '  # "..." spans come first
    assert texts['Remove the text "Sale" from the image'] == ""  # removal word before the one quote
    assert texts['Remove "A" and add "B"'] == 'Text "B". '  # two spans: removal words do not count
    assert texts["don't won't"] == 'Text "t won". '  # paired apostrophes are quotes upstream
    assert texts["写上'百灵大模型百灵大'"] == ""  # 8 CJK chars weigh 24 >= 20: not a quote
