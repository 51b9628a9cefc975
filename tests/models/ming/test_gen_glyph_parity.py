"""The glyph branch against upstream Ming 2.0 (2a0c02a), run out of tree on the byt5/ folder that
`gen_glyph_tiny.write_tiny_byt5` writes (seeded draws: the same bytes everywhere), added to the golden
ming-gen-tiny checkpoint. `gen_glyph_expected.safetensors` holds upstream's outputs (fp32, CPU,
transformers 4.57.1 / diffusers 0.36.0 as upstream pins them):
- `mapper.*`: `T5EncoderBlockByT5Mapper` built by `load_byt5` (strict byt5_mapper.pt), in eval mode, on
  a seeded input [2, 24, 16] with a padding mask;
- `glyph.ids` / `glyph.mask`: upstream's tokenizer (AutoTokenizer of the base folder plus the font /
  color tokens) on the glyph texts of PROMPTS, padded to byt5_max_length 24;
- `glyph.tokens`: the rows after the condition of `generate(image_gen_llm_hidden_states=golden
  case2 row 0, image_gen_text=[text], image_gen_only_extract_hidden_states=True)`: ByT5 -> mapper ->
  x mask, concatenated after the 16 condition tokens. Upstream's negative was zeros of [40, 40].
Recorded when it was made: every max abs diff 0.0 (ids and masks equal).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.ming.generation.generator import ImageGenerator
from models.ming.generation.glyph import extract_glyph_text
from tests.models.ming.gen_glyph_tiny import MAX_LENGTH, golden_with_byt5
from tests.models.ming.gen_golden import available, maxdiff, tensors

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
EXPECTED = Path(__file__).with_name("gen_glyph_expected.safetensors")
PROMPTS = [
    'A poster with the title "Summer Sale"',
    "生成一张海报，标题为“百灵 Ming”",
    'A sign "<cn-font-0>Ming <color-1>Omni<extra_id_3>"',  # added tokens, a ByT5 sentinel
    'A scroll reading "' + "abcdefghij" * 4 + '"',  # truncated to 23 bytes + </s>
    "A red fox in the snow",
]
TEXTS = [extract_glyph_text(p) for p in PROMPTS]  # what upstream's processor gave for each
TOL = 1e-5


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> ImageGenerator:
    return ImageGenerator.load(
        golden_with_byt5(tmp_path_factory.mktemp("glyph") / "ckpt"), "cpu", torch.float32
    )


@pytest.fixture(scope="module")
def want() -> dict[str, torch.Tensor]:
    return load_file(EXPECTED)


def test_the_texts_are_upstreams():
    assert TEXTS[1:] == [
        'Text "百灵 Ming". ',
        'Text "<cn-font-0>Ming <color-1>Omni<extra_id_3>". ',
        'Text "abcdefghijabcdefghijabcdefghijabcdefghij". ',
        "",
    ]


def test_the_tokens_equal_upstreams(gen, want):
    ids, mask = gen.glyph.tokens(TEXTS)
    assert torch.equal(ids, want["glyph.ids"]) and torch.equal(mask, want["glyph.mask"])
    assert ids.shape == (len(TEXTS), MAX_LENGTH)
    assert int(mask[2].sum()) == 22  # <cn-font-0>, <color-1> and <extra_id_3> are one token each


def test_the_mapper_equals_upstreams(gen, want):
    out = gen.glyph.mapper(want["mapper.input"], want["mapper.mask"])
    assert maxdiff(out, want["mapper.output"]) < TOL


def test_the_glyph_tokens_equal_upstreams_load_path(gen, want):
    tokens = gen.glyph(TEXTS[:4])  # (4, T, c)
    assert maxdiff(tokens, want["glyph.tokens"]) < TOL
    pad = want["glyph.mask"][:4] == 0
    assert bool((tokens[pad] == 0).all()) and pad.any()  # padded slots are exact zeros


def test_the_glyph_tokens_follow_the_condition_and_the_negative_gets_zeros(gen, want):
    condition = gen.condition(tensors()["case2.selected_queries"][0])  # (16, 40)
    for i, text in enumerate(TEXTS[:4]):
        joined, negative = gen.add_glyph(condition, torch.zeros_like(condition), text)
        assert joined.shape == (16 + MAX_LENGTH, 40)
        assert torch.equal(joined[:16], condition)
        assert maxdiff(joined[16:], want["glyph.tokens"][i]) < TOL
        assert negative.shape == joined.shape and not negative.any()
    assert gen.add_glyph(condition, None, TEXTS[0])[1] is None  # the variant's zeros take its shape


def test_no_text_adds_nothing(gen):
    condition = gen.condition(tensors()["case2.selected_queries"][0])
    joined, negative = gen.add_glyph(condition, None, "")
    assert joined is condition and negative is None


def test_the_glyph_encoder_runs_in_eval_mode(gen):
    """Upstream leaves the mapper in training mode after load_byt5 (dropout 0.1 here and in ByT5-small:
    two upstream calls differed by 2.96 out of tree); we run it as the eval module it is trained to be."""
    assert not gen.glyph.training and not gen.glyph.mapper.training and not gen.glyph.encoder.training
    assert gen.glyph.encoder.config.dropout_rate > 0
    assert torch.equal(gen.glyph(TEXTS[:1]), gen.glyph(TEXTS[:1]))
