"""Loading the optional byt5/ glyph folder: the tiny upstream-layout folder loads as it is; a missing,
unexpected or mis-shaped tensor of either .pt file names itself; bad byt5.json values are named; glyph
tokens must be as wide as the condition they join; no byt5/ folder (or a diffusion-only generator)
means no glyph encoder and conditions left exactly as they were."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from engine.errors import CheckpointError
from models.ming.generation.generator import ImageGenerator
from tests.models.ming.gen_glyph_tiny import CHANNELS, MAX_LENGTH, SPECIAL_TOKENS, golden_with_byt5
from tests.models.ming.gen_golden import available, tensors, writable_copy

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
MAPPER = ("byt5", "byt5_mapper", "byt5_mapper.pt")
ENCODER = ("byt5", "byt5_model", "byt5_model.pt")


@pytest.fixture()
def ckpt(tmp_path):
    return golden_with_byt5(tmp_path / "ckpt")


def load(root, parts="all"):
    return ImageGenerator.load(root, "cpu", torch.float32, parts)


def edit_pt(path, drop=(), add=None, reshape=None):
    state = torch.load(path, weights_only=True)
    for key in drop:
        del state[key]
    state.update(add or {})
    for key, shape in (reshape or {}).items():
        state[key] = torch.zeros(shape)
    torch.save(state, path)


def edit_byt5_json(root, section=None, **changes):
    path = root / "byt5" / "byt5.json"
    data = json.loads(path.read_text())
    (data if section is None else data[section]).update(changes)
    path.write_text(json.dumps(data))


def test_the_tiny_folder_loads_as_it_is(ckpt):
    glyph = load(ckpt).glyph
    assert len(glyph.tokenizer) == 384 + SPECIAL_TOKENS and glyph.max_length == MAX_LENGTH
    assert glyph.encoder.embed_tokens.weight.shape == (384 + SPECIAL_TOKENS, 16)
    assert len(glyph.encoder.block) == 2 and len(glyph.mapper.blocks) == 2
    assert glyph.mapper.channel_mapper.out_features == CHANNELS


def test_no_byt5_folder_means_no_glyph_encoder_and_nothing_added(tmp_path):
    gen = load(writable_copy(tmp_path / "plain"))
    assert gen.glyph is None
    condition = gen.condition(tensors()["case2.selected_queries"][0])
    joined, negative = gen.add_glyph(condition, None, 'Text "Sale". ')
    assert joined is condition and negative is None


def test_only_the_condition_side_loads_the_glyph_encoder(ckpt):
    assert load(ckpt, "condition").glyph is not None
    assert load(ckpt, "diffusion").glyph is None  # the tokens arrive inside the handed-off condition


@pytest.mark.parametrize(("drop", "add", "reshape", "message"), [
    (["blocks.1.layer.0.SelfAttention.q.weight"], None, None, r"missing.*blocks\.1\.layer\.0\.SelfAttention"),
    ([], {"blocks.2.layer.0.layer_norm.weight": torch.ones(16)}, None, r"unexpected.*blocks\.2\.layer\.0"),
    ([], None, {"channel_mapper.weight": (32, 16)}, r"channel_mapper\.weight.*shape"),
])  # fmt: skip
def test_a_bad_mapper_tensor_names_itself(ckpt, drop, add, reshape, message):
    edit_pt(ckpt.joinpath(*MAPPER), drop, add, reshape)
    with pytest.raises(CheckpointError, match=r"byt5/byt5_mapper/byt5_mapper\.pt: .*" + message):
        load(ckpt)


def test_a_missing_encoder_tensor_names_itself(ckpt):
    edit_pt(ckpt.joinpath(*ENCODER), drop=["block.1.layer.1.DenseReluDense.wi_0.weight"])
    with pytest.raises(CheckpointError, match=r"byt5_model\.pt: missing.*block\.1\.layer\.1\.DenseReluDense"):
        load(ckpt)


def test_the_embedding_must_cover_the_tokenizer(ckpt):
    edit_byt5_json(ckpt, "byt5_config", special_token=False)  # 384 ids, but the table has 389 rows
    with pytest.raises(
        CheckpointError, match=r"embed_tokens\.weight has shape \(389, 16\), expected \(384, 16\)"
    ):
        load(ckpt)


def test_without_special_tokens_markup_is_plain_bytes(tmp_path):
    root = golden_with_byt5(tmp_path / "ckpt", byt5_config={"special_token": False})
    glyph = load(root).glyph
    ids, _ = glyph.tokens(['Text "<color-1>". '])
    assert len(glyph.tokenizer) == 384 and int(ids.max()) < 259  # every id a byte or </s>


def test_pickled_objects_are_not_read(ckpt):
    torch.save(torch.nn.Linear(2, 2), ckpt.joinpath(*MAPPER))
    with pytest.raises(CheckpointError, match=r"byt5_mapper\.pt: cannot read it as a tensor state dict"):
        load(ckpt)


def test_the_glyph_width_must_be_the_condition_width(tmp_path):
    root = golden_with_byt5(tmp_path / "ckpt", mapper={"sdxl_channels": 32})
    with pytest.raises(CheckpointError, match=r"32 wide .*sdxl_channels.* is 40 .*diffusion_c_input_dim"):
        load(root)


@pytest.mark.parametrize(("section", "changes", "message"), [
    (None, {"byt5_max_length": 0}, r"byt5_max_length must be a positive integer"),
    ("byt5_mapper_config", {"num_layers": -1}, r"num_layers must be a non-negative integer"),
    ("byt5_mapper_config", {"type": "ByT5Mapper"}, r"byt5_mapper_config\.type is not a key"),
    ("byt5_config", {"special_token": "yes"}, r"byt5_config\.special_token must be true or false"),
    ("byt5_config", {"cache_dir": "/x"}, r"byt5_config\.cache_dir is not a key"),
    ("byt5_config", {"train_text_encoder_lora": True}, r"train_text_encoder_lora is not supported"),
])  # fmt: skip
def test_bad_byt5_json_values_are_named(ckpt, section, changes, message):
    edit_byt5_json(ckpt, section, **changes)
    with pytest.raises(CheckpointError, match=r"byt5\.json: .*" + message):
        load(ckpt)


def test_a_missing_index_file_is_named(ckpt):
    (ckpt / "byt5" / "color_idx.json").unlink()
    with pytest.raises(CheckpointError, match=r"color_idx\.json \(byt5_config\.color_ann_path\)"):
        load(ckpt)


def test_a_mapper_without_blocks_is_its_norms_and_linear(tmp_path):
    """num_layers 0: upstream's mapper is layer_norm -> channel_mapper -> final_layer_norm (T5 RMS norms)."""
    root = golden_with_byt5(tmp_path / "ckpt", mapper={"num_layers": 0})
    mapper = load(root).glyph.mapper
    assert mapper.blocks is None
    x = torch.randn(1, MAX_LENGTH, 16, generator=torch.Generator().manual_seed(3))

    def rms(h, gain):
        return gain * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)

    linear = mapper.channel_mapper
    want = rms(
        F.linear(rms(x, mapper.layer_norm.weight), linear.weight, linear.bias), mapper.final_layer_norm.weight
    )
    assert torch.allclose(mapper(x, torch.ones(1, MAX_LENGTH)), want, atol=1e-6)


def test_the_byt5_folder_without_its_mapper_file_is_named(ckpt):
    shutil.rmtree(ckpt / "byt5" / "byt5_mapper")
    with pytest.raises(CheckpointError, match=r"byt5_mapper\.pt: cannot read"):
        load(ckpt)
