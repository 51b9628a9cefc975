"""Loading a Ming 2.0 thinker: the release is read from config.json's own `vision_config`
(model_type, else architectures; never the folder's name), the 2.0 demo checkpoint loads strictly
(every key, deepstack mergers included; a missing / unexpected / mis-shaped tensor is a
CheckpointError naming it), 2.0's LLM fields (rope_theta, interleaved frame timestamps) are read,
and a Preview checkpoint still loads as before."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from bailing.demo.ming2 import write_ming2_checkpoint
from bailing.demo.ming_weights import ming_tensor_layout
from bailing.demo.safetensors_writer import write_safetensors_checkpoint
from engine.errors import CheckpointError
from engine.loader import load_state_dict
from engine.model_loader import load_model
from models.ming.config import MING_2_0, PREVIEW, MingConfig, ming_version
from models.ming.vision import MingVision
from models.ming.vision3 import MingVision3
from tests.models.ming.ming_golden import TINY


@pytest.fixture(scope="module")
def demo2(tmp_path_factory):
    return write_ming2_checkpoint(tmp_path_factory.mktemp("ming2") / "ming2", seed=11)


@pytest.fixture(scope="module")
def config2(demo2) -> dict:
    return json.loads((demo2 / "config.json").read_text())


def test_every_2_0_key_loads_strictly(demo2, config2):
    model = load_model(demo2, torch.device("cpu"), torch.float32)
    assert isinstance(model.vision, MingVision3) and model.config.version == MING_2_0
    on_disk = load_state_dict(demo2)
    targets = model.weight_targets()
    assert set(targets) == set(on_disk) == {s.key for s in ming_tensor_layout(config2)}
    for key, value in on_disk.items():
        assert torch.equal(targets[key].dest, value.float()), key
    vision = config2["vision_config"]
    merged = vision["hidden_size"] * 4
    assert targets["vision.patch_embed.proj.bias"].shape == (vision["hidden_size"],)
    assert targets["vision.pos_embed.weight"].shape == (64, vision["hidden_size"])
    assert targets["vision.deepstack_merger_list.2.norm.weight"].shape == (merged,)
    assert targets["vision.merger.norm.weight"].shape == (vision["hidden_size"],)
    assert targets["linear_proj.0.weight"].shape == (128, vision["out_hidden_size"])  # (d, image_emb_dim)
    assert not any(k.startswith("vision.") and ".mlp.gate_proj" in k for k in targets)  # no Preview keys


@pytest.mark.parametrize(
    ("fault", "key"),
    [
        ("missing", "vision.deepstack_merger_list.1.linear_fc2.bias"),
        ("missing", "vision.pos_embed.weight"),
        ("unexpected", "vision.merger.ln_q.weight"),  # a Preview key in a 2.0 checkpoint
        ("shape", "linear_proj.0.weight"),  # the Preview's 8192-wide projector input
        ("shape", "vision.blocks.0.attn.qkv.weight"),
    ],
)
def test_a_bad_2_0_checkpoint_names_the_key(demo2, tmp_path, fault, key):
    state = load_state_dict(demo2)
    if fault == "missing":
        del state[key]
    elif fault == "unexpected":
        state[key] = torch.ones(32)
    else:
        state[key] = torch.zeros(state[key].shape[0], 8192 if key.startswith("linear") else 7)
    write_safetensors_checkpoint(tmp_path, state, dtype=torch.float32, max_shard_bytes=4_000_000)
    shutil.copy(demo2 / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_model(tmp_path, torch.device("cpu"), torch.float32)


def test_the_release_comes_from_the_config_not_the_folder_name(demo2, tmp_path):
    """A 2.0 checkpoint in a folder named like the Preview is 2.0; the Preview golden stays Preview."""
    disguised = shutil.copytree(demo2, tmp_path / "Ming-flash-omni-Preview")
    assert isinstance(load_model(disguised, torch.device("cpu"), torch.float32).vision, MingVision3)
    preview = load_model(TINY, torch.device("cpu"), torch.float32)
    assert isinstance(preview.vision, MingVision) and preview.config.version == PREVIEW
    assert preview.linear_proj[0].weight.shape[1] == 8192 and not preview.config.tokens.interleaved_video


@pytest.mark.parametrize(
    ("vision", "expected"),
    [
        ({"model_type": "qwen3_moe_vit"}, MING_2_0),
        ({"architectures": ["Qwen3MoeVisionTransformer"]}, MING_2_0),
        ({"model_type": "qwen2_5_vit", "architectures": ["Qwen2_5_VisionTransformer"]}, PREVIEW),
        ({"depth": 2}, PREVIEW),  # neither field: read as the Preview, as before 2.0
    ],
)
def test_ming_version_reads_the_vision_section(vision, expected):
    assert ming_version(vision) == expected


@pytest.mark.parametrize(
    ("vision", "field"),
    [
        ({"model_type": "qwen3_vl_moe_vision"}, "vision_config.model_type"),
        ({"architectures": ["SiglipVisionModel"]}, "vision_config.architectures"),
        (
            {"model_type": "qwen3_moe_vit", "architectures": ["Qwen2_5_VisionTransformer"]},
            "vision_config.model_type",
        ),
    ],
)
def test_unknown_or_contradictory_vision_sections_are_named(config2, demo2, tmp_path, vision, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ming_version(vision)
    raw = copy.deepcopy(config2)
    raw["vision_config"].update(vision)
    shutil.copytree(demo2, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
        load_model(tmp_path / "m", torch.device("cpu"), torch.float32)


def test_2_0_llm_fields(config2):
    cfg = MingConfig.from_dict(config2)
    assert cfg.llm.rope_theta == 2400000.0 and cfg.tokens.interleaved_video
    assert cfg.vision.deepstack_visual_indexes == (1, 2, 3) and cfg.vision.out_hidden_size == 96
    raw = copy.deepcopy(config2)
    del raw["llm_config"]["use_interleaved_frame_timestamp"]
    assert MingConfig.from_dict(raw).tokens.interleaved_video  # 2.0's code defaults it to true
    raw["llm_config"]["use_interleaved_frame_timestamp"] = False
    assert not MingConfig.from_dict(raw).tokens.interleaved_video
    raw["llm_config"]["use_interleaved_frame_timestamp"] = "yes"
    with pytest.raises(ValueError, match="llm_config.use_interleaved_frame_timestamp"):
        MingConfig.from_dict(raw)


def test_the_preview_ignores_the_2_0_flag():
    raw = json.loads((TINY / "config.json").read_text())
    raw["llm_config"]["use_interleaved_frame_timestamp"] = True  # the Preview's code has no such flag
    assert not MingConfig.from_dict(raw).tokens.interleaved_video


def test_a_bf16_2_0_thinker_encodes_an_image(demo2):
    model = load_model(demo2, torch.device("cpu"), torch.bfloat16)
    grid = torch.tensor([[1, 4, 6]])
    pixels = torch.randn(24, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        rows = model.encode_images(pixels, grid)
    assert rows.shape == (6, 128) and rows.dtype == torch.bfloat16
    assert torch.allclose(rows.float().norm(dim=-1), torch.ones(6), atol=1e-2)  # L2-normalised
