"""Loading a Preview (SD3) checkpoint in the upstream layout through `ImageGenerator.load`: the variant
from mlp/config.json (dit_type "sd3", or no dit_type at all), the DiT from transformer/config.json as
upstream saves it, strictly (a missing Ming tensor or an unknown one names itself)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError
from models.ming.generation.generator import ImageGenerator
from models.ming.generation.sd3 import MingSD3Transformer, SD3Variant
from tests.models.ming.gen_golden import available
from tests.models.ming.gen_sd3_tiny import DIT_CONFIG, write_tiny_sd3

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
DIT_FILE = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture()
def ckpt(tmp_path):
    return write_tiny_sd3(tmp_path / "ming-sd3")


def edit_tensors(path, drop=(), add=None):
    state = load_file(path)
    for key in drop:
        del state[key]
    state.update(add or {})
    save_file(state, path)


def edit_json(path, drop=(), **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    for key in drop:
        del data[key]
    path.write_text(json.dumps(data))


def test_the_upstream_layout_loads_as_the_sd3_variant(ckpt):
    assert (
        json.loads((ckpt / "transformer" / "config.json").read_text())["_class_name"]
        == "SD3Transformer2DModel"
    )
    gen = ImageGenerator.load(ckpt, "cpu", torch.float32)
    assert gen.config.dit_type == "sd3" and gen.config.defaults.guidance_scale == 5.0
    assert isinstance(gen.variant, SD3Variant) and isinstance(gen.variant.dit, MingSD3Transformer)
    dit = gen.variant.dit
    assert dit.config.rope_max_index == DIT_CONFIG["rope_max_index"] and len(dit.noise_refiner) == 2
    assert gen.heads.mlp.fc2.out_features == dit.config.joint_attention_dim  # the MLP feeds the DiT's context
    saved = load_file(ckpt / DIT_FILE)
    assert all(torch.equal(t, saved[k]) for k, t in dit.state_dict().items())


def test_no_dit_type_means_sd3(ckpt):
    edit_json(ckpt / "mlp" / "config.json", drop=["dit_type"])
    assert isinstance(ImageGenerator.load(ckpt, "cpu", torch.float32).variant, SD3Variant)


@pytest.mark.parametrize("key", [
    "noise_refiner.1.attn.to_q.weight",
    "ref_image_refiner.0.norm1.linear.bias",
    "ref_pos_embed.proj.weight",
    "ref_pos_embed.pos_embed",
])  # fmt: skip
def test_a_missing_ming_tensor_names_itself(ckpt, key):
    edit_tensors(ckpt / DIT_FILE, drop=[key])
    with pytest.raises(CheckpointError, match="transformer/.*" + re.escape(key)):
        ImageGenerator.load(ckpt, "cpu", torch.float32)


def test_an_unknown_dit_tensor_names_itself(ckpt):
    edit_tensors(ckpt / DIT_FILE, add={"noise_refiner.2.norm1.linear.bias": torch.zeros(768)})
    with pytest.raises(CheckpointError, match=r"transformer/.*noise_refiner\.2\.norm1\.linear\.bias"):
        ImageGenerator.load(ckpt, "cpu", torch.float32)


def test_refiner_count_is_upstreams_two_whatever_the_config_says(ckpt):
    """Upstream overrides num_refiner_layers with 2, so its checkpoints always hold two blocks each."""
    edit_json(ckpt / "transformer" / "config.json", num_refiner_layers=4)
    gen = ImageGenerator.load(ckpt, "cpu", torch.float32)
    assert len(gen.variant.dit.noise_refiner) == len(gen.variant.dit.ref_image_refiner) == 2


def test_a_zimage_dit_under_dit_type_sd3_is_refused(ckpt):
    edit_json(ckpt / "transformer" / "config.json", _class_name="ZImageTransformer2DModel")
    with pytest.raises(CheckpointError, match=r"dit_type 'sd3' needs a SD3Transformer2DModel"):
        ImageGenerator.load(ckpt, "cpu", torch.float32)


def test_mlp_width_must_be_the_dits_joint_attention_dim(tmp_path):
    ckpt = write_tiny_sd3(tmp_path / "ming-sd3")
    edit_json(ckpt / "transformer" / "config.json", joint_attention_dim=48)
    edit_tensors(ckpt / DIT_FILE, add={"context_embedder.weight": torch.zeros(128, 48)})
    with pytest.raises(CheckpointError, match=r"64-wide caption features.*joint_attention_dim is 48"):
        ImageGenerator.load(ckpt, "cpu", torch.float32)
