"""The demo Ming thinker checkpoint: upstream Preview layout and config fields, token ids from its own
tokenizer, strict load, the processor on a real PNG / WAV / text chat, a finite forward, the chat
template equal to Ming's chat format, and `write_demo_models` writing it once."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from bailing.demo.ling_config import LingDemoSpec, padded_vocab_size
from bailing.demo.ming import MING_SPECIAL_TOKENS, MingDemoSpec, write_ming_checkpoint
from bailing.demo.ming_weights import ming_tensor_layout, sinusoids
from bailing.demo.writer import STAMP_FILE, write_demo_models
from engine.loader import load_state_dict
from engine.model_loader import load_model
from engine.tokenizer import load_tokenizer
from models.ming.config import MingConfig
from models.ming.language import AUDIO_GATE, IMAGE_GATE
from models.ming.model import BailingMM2NativeForConditionalGeneration
from models.ming.processing.image import ImageConfig
from models.ming.processing.processor import MingProcessor, configs_from_folder
from models.ming.processing.prompt import SpecialTokens, render_chat
from tests.models.ming.processing_media import png_bytes, wav_bytes

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "golden" / "ming-tiny"
# transformers PretrainedConfig defaults the golden config.json carries; the demo leaves them out.
_HF_NOISE = {"id2label", "label2id", "num_beams", "top_k", "return_dict", "_name_or_path"}


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _golden_config() -> dict:
    if not (GOLDEN / "tiny-ming" / "config.json").is_file():
        pytest.skip(f"Ming golden data not found at {GOLDEN}")
    return _config(GOLDEN / "tiny-ming")


def _pattern(key: str) -> str:
    """A key with its layer / block / expert numbers replaced, so different sizes compare."""
    return re.sub(r"\.(layers|blocks|experts)\.\d+\.", r".\1.N.", key)


def test_config_has_the_upstream_fields_only(demo_ming):
    config, golden = _config(demo_ming), _golden_config()
    assert config["architectures"] == ["BailingMM2NativeForConditionalGeneration"]
    assert config["model_type"] == golden["model_type"] and config["mlp_depth"] == 2
    assert set(config) == set(golden)
    for section in ("llm_config", "vision_config", "audio_config"):
        extra = set(config[section]) - set(golden[section]) - {"use_qk_norm"}  # the real Preview has it
        assert not extra, (section, extra)
        assert not _HF_NOISE & set(config[section]), section
    llm, vision = config["llm_config"], config["vision_config"]
    assert llm["model_type"] == "bailing_moe_v2" and llm["router_type"] == "MultiRouter"
    assert llm["rope_scaling"] == {"factor": None, "type": "video_rope"}
    assert llm["head_dim"] * llm["partial_rotary_factor"] == 64  # VideoRoPE's hard-coded sections
    assert vision["out_hidden_size"] == 8192 and vision["model_type"] == "qwen2_5_vit"
    assert config["audio_config"]["whisper_encoder_config"]["n_mels"] == 128
    parsed = MingConfig.from_dict(config)
    assert parsed.vision.fullatt_block_indexes == (1,) and parsed.audio.norm_query_embeds


def test_token_ids_are_the_tokenizer_ones(demo_ming):
    tok = load_tokenizer(demo_ming)
    llm = _config(demo_ming)["llm_config"]
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|role_end|>", "<|endoftext|>", *MING_SPECIAL_TOKENS)}
    for token, token_id in ids.items():
        assert tok.encode(token, add_special_tokens=False) == [token_id], token
    assert llm["image_patch_token"] == ids["<imagePatch>"] and llm["image_start_token"] == ids["<image>"]
    assert llm["video_patch_token"] == ids["<framePatch>"]
    assert llm["video_start_token"] == ids["</image>"]  # the Preview's quirk, kept
    assert llm["eos_token_id"] == tok.eos_token_id == ids["<|role_end|>"]
    assert llm["pad_token_id"] == tok.pad_token_id == ids["<|endoftext|>"]
    generation = json.loads((demo_ming / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (
        llm["eos_token_id"],
        llm["pad_token_id"],
    )
    assert llm["vocab_size"] == padded_vocab_size(len(tok)) and llm["vocab_size"] - len(tok) < 128
    tokens = SpecialTokens.from_tokenizer(tok)
    assert (tokens.image_patch, tokens.audio_patch, tokens.eos) == (
        ids["<imagePatch>"],
        ids["<audioPatch>"],
        "<|role_end|>",
    )


def test_layout_matches_the_official_key_pattern(demo_ming):
    _golden_config()  # skips without the golden set
    listing = (GOLDEN / "tiny_state_dict_keys.txt").read_text().splitlines()
    golden = [line.split("\t")[0] for line in listing if line.strip()]
    keys = {spec.key for spec in ming_tensor_layout(_config(demo_ming))}
    assert {_pattern(k) for k in keys} == {_pattern(k) for k in golden}
    assert set(load_state_dict(demo_ming)) == keys


def test_loads_strictly_in_float32(demo_ming):
    model = load_model(demo_ming, torch.device("cpu"), torch.float32)
    assert type(model) is BailingMM2NativeForConditionalGeneration
    assert set(model.weight_targets()) == set(load_state_dict(demo_ming))
    mlp = model.model.model.layers[1].mlp
    gates = [mlp.gate.weight, mlp.image_gate.weight, mlp.audio_gate.weight]
    assert not torch.equal(gates[0], gates[1]) and not torch.equal(gates[1], gates[2])
    assert mlp.gate.expert_bias.abs().sum() > 0
    positions = model.audio.positional_embedding
    assert torch.allclose(positions, sinusoids(*positions.shape), atol=1e-2)  # bf16 on disk


def test_weights_are_bf16_and_seeded(demo_ming, tmp_path):
    index = json.loads((demo_ming / "model.safetensors.index.json").read_text())
    shard = demo_ming / index["weight_map"]["model.lm_head.weight"]
    with safe_open(str(shard), framework="pt") as f:
        head = f.get_tensor("model.lm_head.weight")
    assert head.dtype == torch.bfloat16
    again = write_ming_checkpoint(tmp_path / "again", seed=3)
    for name in ("config.json", "tokenizer.json", *index["weight_map"].values()):
        assert (again / name).read_bytes() == (demo_ming / name).read_bytes(), name
    other = load_state_dict(write_ming_checkpoint(tmp_path / "other", seed=4))
    assert not torch.equal(other["model.lm_head.weight"], head)


def test_preprocessor_config_keeps_images_small(demo_ming):
    image, audio, _ = configs_from_folder(demo_ming)
    spec = MingDemoSpec()
    assert (image.min_pixels, image.max_pixels) == (spec.min_pixels, spec.max_pixels)
    defaults = ImageConfig()
    assert (image.image_mean, image.image_std) == (defaults.image_mean, defaults.image_std)
    assert audio.max_seconds == 300.0  # n_ctx 15000 encoder positions


@pytest.fixture(scope="module")
def thinker(demo_ming):
    return load_model(demo_ming, torch.device("cpu"), torch.float32)


def test_a_chat_with_an_image_and_audio_runs_through_the_thinker(demo_ming, thinker):
    processor = MingProcessor.from_pretrained(demo_ming)
    picture = ((np.indices((200, 300, 3)).sum(0) * 37 + np.arange(3) * 85) % 256).astype(np.uint8)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)  # 1 s
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What is this?"}],
        }
    ]
    inputs = processor.process(messages, images=[png_bytes(picture)], audios=[wav_bytes(wave)])
    assert inputs.image_grid_thw.tolist() == [[1, 12, 20]]  # 168 x 280: within max_pixels
    assert inputs.audio_placeholder_loc_lens[0, 0, 1] == 25  # 100 mel frames -> 25 tokens
    with torch.inference_mode():
        prompt = thinker.prepare_prompt(inputs.input_ids, **inputs.media())
        logits = thinker.compute_logits(thinker(prompt.ids, ctx=None, **prompt.forward_args()))
    vocab = _config(demo_ming)["llm_config"]["vocab_size"]
    assert logits.shape == (inputs.num_tokens, vocab) and torch.isfinite(logits).all()
    assert set(prompt.gate.unique().tolist()) == {0, IMAGE_GATE, AUDIO_GATE}
    assert prompt.rope_delta < 0  # the image block's positions are 3-D


@pytest.mark.parametrize(
    ("messages", "thinking"),
    [
        ([{"role": "user", "content": "hello"}], False),
        ([{"role": "user", "content": "hello"}], True),
        (
            [
                {"role": "system", "content": "You are Ming."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello!"},
                {"role": "HUMAN", "content": [{"type": "video"}, {"type": "text", "text": "and this?"}]},
            ],
            False,
        ),
        ([{"role": "system", "content": ""}, {"role": "user", "content": [{"type": "image"}]}], False),
    ],
)
def test_chat_template_renders_mings_chat_format(demo_ming, messages, thinking):
    tok = load_tokenizer(demo_ming)
    kwargs = {"enable_thinking": True} if thinking else {}
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    assert text == render_chat(messages, "<|role_end|>", thinking)[0]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"llm": LingDemoSpec(head_dim=32)}, "head_dim"),
        ({"vision_num_heads": 3}, "vision_num_heads"),
        ({"audio_n_ctx": 0}, "audio_n_ctx"),
        ({"max_pixels": 28 * 28}, "max_pixels"),
    ],
)
def test_bad_spec_names_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        MingDemoSpec(**change)


def test_write_demo_models_writes_ming_once(tmp_path):
    (path,) = write_demo_models(tmp_path, ["ming"]).values()
    stamp = json.loads((path / STAMP_FILE).read_text())
    assert (stamp["family"], stamp["seed"]) == ("ming", 3)
    assert stamp["spec"] == json.loads(json.dumps(dataclasses.asdict(MingDemoSpec())))
    assert {"config.json", "preprocessor_config.json", "tokenizer.json"} <= set(stamp["files"])
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert write_demo_models(tmp_path, ["ming"]) == {"ming": path}
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ming"]  # no temp folder left


def test_generation_heads_in_the_2_0_layout(demo_ming):
    """mlp/ (config + query tokens, projections, condition MLP), connector/, transformer/, vae/ and
    scheduler/ beside the thinker; they load strictly and sized to the thinker's hidden width."""
    from models.ming.generation.config import image_generation_config
    from models.ming.generation.generator import ImageGenerator

    for part, name in [("mlp", "model.safetensors"), ("connector", "model.safetensors"),
                       ("transformer", "diffusion_pytorch_model.safetensors"),
                       ("vae", "diffusion_pytorch_model.safetensors"),
                       ("scheduler", "scheduler_config.json")]:  # fmt: skip
        assert (demo_ming / part / name).is_file(), part
    assert json.loads((demo_ming / "transformer" / "config.json").read_text())["_class_name"] == (
        "ZImageTransformer2DModel"
    )
    cfg = image_generation_config(demo_ming)
    assert (cfg.dit_type, cfg.scales) == ("zimage", (2, 4))
    gen = ImageGenerator.load(demo_ming, "cpu", torch.float32)
    hidden = json.loads((demo_ming / "config.json").read_text())["llm_config"]["hidden_size"]
    assert gen.heads.queries().shape == (4 + 16, hidden)
    with safe_open(demo_ming / "mlp" / "model.safetensors", "pt") as f:
        assert f.get_tensor("query_tokens_dict.4x4").dtype == torch.bfloat16


def test_a_spec_without_heads_writes_an_understanding_only_model(tmp_path):
    from models.ming.generation.config import image_generation_config

    small = MingDemoSpec(image_generation=None)
    path = write_ming_checkpoint(tmp_path / "m", small)
    assert image_generation_config(path) is None and not (path / "mlp").exists()
