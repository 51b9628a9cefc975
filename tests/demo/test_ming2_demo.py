"""The Ming 2.0 demo checkpoint (`write_ming2_checkpoint`): the thinker's 2.0 config fields (the
`qwen3_moe_vit` vision_config, rope_theta 2.4e6, interleaved frame timestamps), every 2.0 key of the
upstream layout (deepstack mergers included) in bf16, token ids from its own tokenizer, the Z-Image
generation heads beside it, seeded output of the whole folder (talker/ included: its parts are tested
in test_ming2_speech_demo.py), strict loading, and spec errors that name the field."""

from __future__ import annotations

import json
import re

import pytest
import torch

from bailing.demo.ming import MING_SPECIAL_TOKENS
from bailing.demo.ming2 import Ming2DemoSpec, write_ming2_checkpoint
from bailing.demo.ming_weights import ming_tensor_layout
from engine.loader import load_state_dict
from engine.model_loader import load_model
from engine.tokenizer import load_tokenizer
from models.ming.config import MING_2_0, MingConfig

# 2.0's vision_config fields (the upstream config.json's, less transformers' bookkeeping ones).
UPSTREAM_VISION_FIELDS = {
    "architectures", "deepstack_visual_indexes", "depth", "hidden_act", "hidden_size", "in_channels",
    "initializer_range", "intermediate_size", "model_type", "num_heads", "num_position_embeddings",
    "out_hidden_size", "patch_size", "spatial_merge_size", "temporal_patch_size",
}  # fmt: skip
# specs/ming_layout.md section 2, "2.0 vision keys" (blocks / mergers numbered N).
VISION_2_0_PATTERNS = {
    "vision.patch_embed.proj.weight", "vision.patch_embed.proj.bias", "vision.pos_embed.weight",
    *(f"vision.blocks.N.{norm}.{p}" for norm in ("norm1", "norm2") for p in ("weight", "bias")),
    *(f"vision.blocks.N.{m}.{p}" for m in ("attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")
      for p in ("weight", "bias")),
    *(f"vision.{m}.{part}.{p}" for m in ("merger", "deepstack_merger_list.N")
      for part in ("norm", "linear_fc1", "linear_fc2") for p in ("weight", "bias")),
}  # fmt: skip


@pytest.fixture(scope="module")
def demo2(tmp_path_factory):
    return write_ming2_checkpoint(tmp_path_factory.mktemp("ming2d") / "ming2")


def _config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_config_has_the_2_0_fields(demo2):
    config = _config(demo2)
    assert config["architectures"] == ["BailingMM2NativeForConditionalGeneration"]
    assert (config["model_type"], config["mlp_depth"], config["transformers_version"]) == (
        "bailingmm_moe_v2_lite", 2, "4.57.1",
    )  # fmt: skip
    vision, llm = config["vision_config"], config["llm_config"]
    assert set(vision) == UPSTREAM_VISION_FIELDS
    assert (vision["model_type"], vision["architectures"]) == ("qwen3_moe_vit", ["Qwen3MoeVisionTransformer"])
    assert (vision["patch_size"], vision["hidden_act"], vision["deepstack_visual_indexes"]) == (
        16, "gelu_pytorch_tanh", [1, 2, 3],
    )  # fmt: skip
    assert llm["rope_theta"] == 2400000.0 and llm["use_interleaved_frame_timestamp"] is True
    assert "spatial_merge_size" not in llm and "tokens_per_second" not in llm
    assert llm["rope_scaling"] == {"factor": None, "type": "video_rope"}
    assert MingConfig.from_dict(config).version == MING_2_0


def test_token_ids_are_the_tokenizer_ones(demo2):
    tok = load_tokenizer(demo2)
    llm = _config(demo2)["llm_config"]
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|role_end|>", *MING_SPECIAL_TOKENS)}
    assert (llm["image_start_token"], llm["image_patch_token"]) == (ids["<image>"], ids["<imagePatch>"])
    assert llm["video_patch_token"] == ids["<framePatch>"]
    assert llm["video_start_token"] == ids["</image>"]  # upstream 2.0 ships the Preview's value too
    assert llm["eos_token_id"] == tok.eos_token_id == ids["<|role_end|>"]


def test_every_2_0_key_in_bf16_and_loaded_strictly(demo2):
    on_disk = load_state_dict(demo2)
    keys = {s.key for s in ming_tensor_layout(_config(demo2))}
    assert set(on_disk) == keys and all(v.dtype == torch.bfloat16 for v in on_disk.values())
    vision = {
        re.sub(r"\.(blocks|deepstack_merger_list)\.\d+\.", r".\1.N.", k)
        for k in keys
        if k.startswith("vision.")
    }
    assert vision == VISION_2_0_PATTERNS
    assert sum(k.startswith("vision.deepstack_merger_list.") for k in keys) == 3 * 6
    assert on_disk["linear_proj.0.weight"].shape == (128, Ming2DemoSpec().vision_out_hidden_size)
    model = load_model(demo2, torch.device("cpu"), torch.float32)
    assert set(model.weight_targets()) == keys


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_seeded_output(demo2, tmp_path):
    again = write_ming2_checkpoint(tmp_path / "again")
    files = _files(demo2)
    assert {"talker/model.safetensors", "talker/campplus.onnx", "mlp/model.safetensors"} <= set(files)
    assert _files(again) == files  # every file of the folder, byte for byte
    other = write_ming2_checkpoint(tmp_path / "other", seed=4)
    assert not torch.equal(
        load_state_dict(other)["vision.pos_embed.weight"], load_state_dict(demo2)["vision.pos_embed.weight"]
    )
    for name in ("mlp/model.safetensors", "talker/model.safetensors", "talker/vae/model.safetensors"):
        assert (other / name).read_bytes() != files[name], name


def test_generation_heads_are_the_2_0_z_image_ones(demo2):
    """mlp/ (dit_type zimage), connector/, transformer/, vae/, scheduler/ load strictly with the
    thinker's hidden width; `parts` splits them as a thinker / stage worker pair loads them."""
    from models.ming.generation.config import image_generation_config
    from models.ming.generation.generator import ImageGenerator

    cfg = image_generation_config(demo2)
    assert (cfg.dit_type, cfg.scales, cfg.defaults.guidance_scale) == ("zimage", (2, 4), 2.0)
    assert json.loads((demo2 / "transformer" / "config.json").read_text())["_class_name"] == (
        "ZImageTransformer2DModel"
    )
    gen = ImageGenerator.load(demo2, "cpu", torch.float32)
    assert gen.heads.queries().shape == (4 + 16, _config(demo2)["llm_config"]["hidden_size"])
    for parts in ("condition", "diffusion"):
        assert ImageGenerator.load(demo2, "cpu", torch.float32, parts).parts == parts


def test_a_spec_without_heads_or_talker_writes_the_thinker_only(tmp_path):
    from models.ming.generation.config import image_generation_config

    path = write_ming2_checkpoint(tmp_path / "m", Ming2DemoSpec(image_generation=None, speech=None))
    assert image_generation_config(path) is None
    assert not (path / "mlp").exists() and not (path / "talker").exists()
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == []


def test_preprocessor_config(demo2):
    pre = json.loads((demo2 / "preprocessor_config.json").read_text())
    assert (pre["patch_size"], pre["merge_size"], pre["temporal_patch_size"]) == (16, 2, 2)
    assert pre["use_interleaved_frame_timestamp"] is True and pre["min_pixels"] == 4 * 32 * 32


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"vision_num_heads": 3}, "vision_num_heads"),
        ({"vision_num_position_embeddings": 60}, "vision_num_position_embeddings"),
        ({"vision_deepstack_indexes": (1, 4)}, "vision_deepstack_indexes"),
        ({"max_pixels": 32 * 32}, "max_pixels"),
        ({"audio_n_ctx": 0}, "audio_n_ctx"),
    ],
)
def test_bad_spec_names_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        Ming2DemoSpec(**change)
