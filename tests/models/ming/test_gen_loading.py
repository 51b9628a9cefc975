"""Loading the image-generation parts: the golden folders as they are, strictly (a missing, unexpected or
mis-shaped tensor names itself), the variant from the checkpoint's config (never a folder name), and a
checkpoint without heads stays an understanding-only model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError
from models.ming.generation.config import image_generation_config
from models.ming.generation.generator import ImageGenerator
from models.ming.generation.zimage import MingZImageTransformer
from tests.models.ming.gen_golden import available, writable_copy

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")


@pytest.fixture()
def ckpt(tmp_path):
    return writable_copy(tmp_path / "ming-gen")


def edit_tensors(path, drop=(), add=None, reshape=None):
    state = load_file(path)
    for key in drop:
        del state[key]
    state.update(add or {})
    for key, shape in (reshape or {}).items():
        state[key] = torch.zeros(shape)
    save_file(state, path)


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_golden_folders_load_as_they_are(ckpt):
    gen = ImageGenerator.load(ckpt, "cpu", torch.float32)
    assert gen.config.dit_type == "zimage" and gen.config.scales == (2, 4)
    assert isinstance(gen.variant.dit, MingZImageTransformer)
    assert gen.heads.mlp is not None and gen.heads.proj_out.out_features == 40
    assert gen.thinker.hidden_size == 48 and gen.thinker.tokens.start == 157158


def test_no_mlp_folder_means_no_image_output(ckpt):
    shutil.rmtree(ckpt / "mlp")
    assert image_generation_config(ckpt) is None
    assert ImageGenerator.load(ckpt, "cpu", torch.float32) is None


def test_a_missing_part_is_named(ckpt):
    shutil.rmtree(ckpt / "vae")
    with pytest.raises(CheckpointError, match=r"lacks vae/"):
        ImageGenerator.load(ckpt, "cpu", torch.float32)


def test_missing_dit_tensor_names_itself(ckpt):
    edit_tensors(ckpt / "transformer" / "diffusion_pytorch_model.safetensors", drop=["cap_pad_token"])
    with pytest.raises(CheckpointError, match=r"transformer/.*cap_pad_token"):
        ImageGenerator.load(ckpt, "cpu", torch.float32)


def test_unexpected_mlp_tensor_names_itself(ckpt):
    edit_tensors(ckpt / "mlp" / "model.safetensors", add={"query_tokens_dict.8x8": torch.zeros(64, 48)})
    with pytest.raises(CheckpointError, match=r"mlp/.*query_tokens_dict\.8x8"):
        ImageGenerator.load(ckpt, "cpu", torch.float32)


def test_misshaped_vae_tensor_names_itself(ckpt):
    edit_tensors(
        ckpt / "vae" / "diffusion_pytorch_model.safetensors", reshape={"decoder.conv_out.bias": (4,)}
    )
    with pytest.raises(CheckpointError, match=r"vae/.*decoder\.conv_out\.bias.*shape"):
        ImageGenerator.load(ckpt, "cpu", torch.float32)


def test_connector_lm_head_is_known_but_an_unknown_key_is_not(ckpt):
    edit_tensors(ckpt / "connector" / "model.safetensors", add={"model.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"connector/.*model\.extra\.weight"):
        ImageGenerator.load(ckpt, "cpu", torch.float32)


def test_variant_comes_from_the_config_and_must_match_the_dit(ckpt):
    edit_json(ckpt / "mlp" / "config.json", dit_type="sd3")
    with pytest.raises(CheckpointError, match=r"ZImageTransformer2DModel.*dit_type 'sd3'"):
        image_generation_config(ckpt)
    edit_json(ckpt / "mlp" / "config.json", dit_type="sana")
    with pytest.raises(CheckpointError, match=r"dit_type 'sana' is not supported"):
        image_generation_config(ckpt)


def test_no_mlp_config_means_the_preview_defaults(ckpt):
    (ckpt / "mlp" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"dit_type 'sd3'"):  # Preview default: an SD3 DiT
        image_generation_config(ckpt)


def test_a_condition_mlp_is_required_unless_identity(ckpt):
    path = ckpt / "mlp" / "model.safetensors"
    keys = [k for k in load_file(path) if k.startswith("mlp.")]
    edit_tensors(path, drop=keys)
    with pytest.raises(CheckpointError, match=r"lacks the condition MLP"):
        ImageGenerator.load(ckpt, "cpu", torch.float32)
    edit_json(ckpt / "mlp" / "config.json", use_identity_mlp=True, diffusion_c_input_dim=32)
    edit_tensors(path, reshape={"proj_out.weight": (32, 64), "proj_out.bias": (32,)})
    gen = ImageGenerator.load(ckpt, "cpu", torch.float32)
    assert gen.heads.mlp is None
    condition = torch.nn.functional.normalize(torch.randn(16, 32), dim=-1)
    assert torch.equal(gen.heads.caption(condition), condition)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("img_gen_scales", [], "img_gen_scales"),
    ("img_gen_scales", [4, 0], "img_gen_scales"),
    ("diffusion_c_input_dim", -1, "diffusion_c_input_dim"),
    ("use_identity_mlp", "yes", "use_identity_mlp"),
])  # fmt: skip
def test_bad_mlp_config_values_are_named(ckpt, key, value, message):
    edit_json(ckpt / "mlp" / "config.json", **{key: value})
    with pytest.raises(CheckpointError, match=message):
        image_generation_config(ckpt)


def test_partial_loads_for_a_split_thinker_and_stage(ckpt):
    """A thinker that hands requests over loads no DiT / VAE; a stage worker loads no connector."""
    thinker = ImageGenerator.load(ckpt, "cpu", torch.float32, parts="condition")
    assert thinker.variant is None and thinker.vae is None and thinker.connector is not None
    stage = ImageGenerator.load(ckpt, "cpu", torch.float32, parts="diffusion")
    assert stage.connector is None and stage.variant is not None
    whole = ImageGenerator.load(ckpt, "cpu", torch.float32)
    queries = torch.randn(16, 48, generator=torch.Generator().manual_seed(0))
    condition = thinker.condition(queries)
    assert torch.equal(condition, whole.condition(queries))
    with pytest.raises(RuntimeError, match="condition parts only"):
        thinker.new_job(condition, height=64, width=96, seeds=[0], steps=2, guidance=2.0)
    with pytest.raises(RuntimeError, match="diffusion parts only"):
        stage.condition(queries)
    with pytest.raises(ValueError, match="parts must be one of"):
        ImageGenerator.load(ckpt, "cpu", torch.float32, parts="dit")
