"""Tests of the demo checkpoint writer: upstream layout, determinism, sharding, configs, stamps, Ring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bailing.demo.ling_config import LingDemoSpec, padded_vocab_size
from bailing.demo.tokenizer import demo_tokenizer
from bailing.demo.writer import (
    DEMO_MODELS,
    REMOVE,
    STAMP_FILE,
    ling_tensor_layout,
    random_ling_state_dict,
    write_demo_models,
    write_ling_checkpoint,
    write_ring_checkpoint,
    write_safetensors_checkpoint,
)
from models.family import known_families

RING_EXAMPLE = [{"role": "system", "content": "You are Ring."}, {"role": "user", "content": "Hi"}]
RING_PROMPT = "<role>SYSTEM</role>You are Ring.<role>HUMAN</role>Hi<role>ASSISTANT</role><think>\n"
GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "golden" / "ling-tiny" / "tiny-bailing"


def _golden_config() -> dict:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden data not found at {GOLDEN}")
    return json.loads((GOLDEN / "config.json").read_text())


def _read_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) checkpoint folder."""
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            tensors.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    return tensors


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def test_layout_matches_golden_checkpoint():
    config = _golden_config()
    with safe_open(str(GOLDEN / "model.safetensors"), "pt") as f:
        golden = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    ours = random_ling_state_dict(config, seed=0)
    assert _shapes(ours) == golden
    assert len(ours) == 252
    assert all(t.dtype == torch.float32 for t in ours.values())


def test_random_state_dict_is_seeded():
    config = _golden_config()
    a, b, c = (random_ling_state_dict(config, s) for s in (3, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    bias = a["model.layers.1.mlp.gate.expert_bias"]
    assert bias.abs().min() > 0 and bias.std() > 0.01


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory) -> Path:
    return write_ling_checkpoint(tmp_path_factory.mktemp("ckpt") / "ling", seed=0)


def test_two_writes_are_byte_identical(demo_ckpt, tmp_path):
    again = write_ling_checkpoint(tmp_path / "ling", seed=0)
    names = sorted(p.name for p in demo_ckpt.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (demo_ckpt / name).read_bytes() == (again / name).read_bytes(), name
    other = write_ling_checkpoint(tmp_path / "other", seed=1)
    assert (other / "config.json").read_bytes() == (demo_ckpt / "config.json").read_bytes()
    assert _read_checkpoint(other)["lm_head.weight"].ne(_read_checkpoint(demo_ckpt)["lm_head.weight"]).any()


def test_sharded_index_is_consistent(demo_ckpt):
    index = json.loads((demo_ckpt / "model.safetensors.index.json").read_text())
    shards = sorted(demo_ckpt.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (demo_ckpt / "model.safetensors").exists()
    assert {p.name for p in shards} == set(index["weight_map"].values())
    for path in shards:
        assert path.name.endswith(f"-of-{len(shards):05d}.safetensors")
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
        assert keys == {k for k, v in index["weight_map"].items() if v == path.name}
    tensors = _read_checkpoint(demo_ckpt)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    config = json.loads((demo_ckpt / "config.json").read_text())
    assert _shapes(tensors) == {s.key: s.shape for s in ling_tensor_layout(config)}
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())


def test_single_file_and_stale_shards(tmp_path):
    state = {"a": torch.ones(4, 4), "b": torch.zeros(0, 3), "c": torch.arange(6.0)}
    sharded = write_safetensors_checkpoint(tmp_path, state, dtype=torch.float32, max_shard_bytes=40)
    assert [p.name for p in sharded][-1] == "model.safetensors.index.json" and len(sharded) == 3
    single = write_safetensors_checkpoint(tmp_path, state, dtype=torch.float32, max_shard_bytes=None)
    assert [p.name for p in single] == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    loaded = _read_checkpoint(tmp_path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="max_shard_bytes"):
        write_safetensors_checkpoint(tmp_path, state, max_shard_bytes=0)


def test_config_ids_come_from_tokenizer(demo_ckpt):
    config = json.loads((demo_ckpt / "config.json").read_text())
    gen = json.loads((demo_ckpt / "generation_config.json").read_text())
    tok = demo_tokenizer()
    bos, eot, role_end = (tok.token_to_id(t) for t in ("<|startoftext|>", "<|endoftext|>", "<|role_end|>"))
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (bos, eot, eot)
    assert gen == {
        "_from_model_config": False,
        "bos_token_id": bos,
        "eos_token_id": [eot, role_end],
        "pad_token_id": eot,
        "min_new_tokens": 8,  # the demo's only addition: random weights never end the turn at once
        "transformers_version": "4.57.6",
    }
    size = tok.get_vocab_size(with_added_tokens=True)
    assert config["vocab_size"] == padded_vocab_size(size) and config["vocab_size"] % 128 == 0
    assert size <= config["vocab_size"] < size + 128
    tok_cfg = json.loads((demo_ckpt / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|role_end|>" and tok_cfg["model_max_length"] == 4096


def test_config_has_upstream_fields(demo_ckpt):
    config = json.loads((demo_ckpt / "config.json").read_text())
    assert set(_golden_config()) - {"dtype"} <= set(config)
    assert list(config) == sorted(config)
    expected = {
        "architectures": ["BailingMoeV2ForCausalLM"],
        "model_type": "bailing_moe",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_experts": 16,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "moe_intermediate_size": 64,
        "moe_shared_expert_intermediate_size": 64,
        "num_shared_experts": 1,
        "first_k_dense_replace": 1,
        "partial_rotary_factor": 0.5,
        "rope_theta": 600000.0,
        "max_position_embeddings": 4096,
        "routed_scaling_factor": 2.5,
        "num_nextn_predict_layers": 0,
        "norm_topk_prob": True,
        "score_function": "sigmoid",
        "router_dtype": "fp32",
        "use_rmsnorm": True,
        "moe_router_enable_expert_bias": True,
        "torch_dtype": "bfloat16",
        "use_qk_norm": True,
        "use_qkv_bias": False,
        "use_bias": False,
        "tie_word_embeddings": False,
        "rope_scaling": None,
    }
    assert {k: config[k] for k in expected} == expected
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM"
    assert not list(demo_ckpt.glob("*.py"))


def test_config_overrides_shape_the_weights(tmp_path):
    overrides = {
        "partial_rotary_factor": REMOVE,
        "rotary_dim": 16,
        "n_group": 8,
        "num_experts_per_tok": 2,
        "num_nextn_predict_layers": 1,
        "use_qkv_bias": True,
    }
    out = write_ling_checkpoint(tmp_path / "v", config_overrides=overrides, dtype=torch.float32)
    config = json.loads((out / "config.json").read_text())
    assert "partial_rotary_factor" not in config and config["rotary_dim"] == 16 and config["n_group"] == 8
    assert config["torch_dtype"] == "float32"
    tensors = _read_checkpoint(out)
    assert (
        "model.layers.4.eh_proj.weight" in tensors
        and "model.layers.0.attention.query_key_value.bias" in tensors
    )
    assert _shapes(tensors) == {s.key: s.shape for s in ling_tensor_layout(config)}
    assert all(t.dtype == torch.float32 for t in tensors.values())


def _keys(config: dict, **changes) -> dict[str, tuple[int, ...]]:
    return {s.key: s.shape for s in ling_tensor_layout({**config, **changes})}


def test_optional_keys_follow_the_config():
    config = _golden_config()
    base = _keys(config)
    assert "model.layers.0.attention.dense.bias" in _keys(config, use_bias=True)
    assert _keys(config, use_qkv_bias=True)["model.layers.1.attention.query_key_value.bias"] == (128,)
    assert "lm_head.weight" not in _keys(config, tie_word_embeddings=True)
    assert not any("expert_bias" in k for k in _keys(config, moe_router_enable_expert_bias=False))
    assert any("expert_bias" in k for k in _keys(config, moe_router_enable_expert_bias=None))
    assert _keys(config, num_shared_experts=0)["model.layers.1.mlp.shared_experts.up_proj.weight"] == (0, 64)
    assert not any("shared_experts" in k for k in _keys(config, num_shared_experts=None))
    wide = _keys(config, num_shared_experts=2, moe_shared_expert_intermediate_size=48)
    assert wide["model.layers.2.mlp.shared_experts.down_proj.weight"] == (64, 96)
    for head_dim in (None, 0):
        assert _keys(config, head_dim=head_dim)["model.layers.0.attention.query_layernorm.weight"] == (16,)
    no_head_dim = {k: v for k, v in config.items() if k != "head_dim"}
    assert {s.key: s.shape for s in ling_tensor_layout(no_head_dim)} == base
    mtp2 = _keys(config, num_nextn_predict_layers=2)
    assert "model.layers.5.final_layernorm.weight" in mtp2 and "model.layers.5.mlp.gate.weight" in mtp2
    assert "model.layers.0.mlp.gate_proj.weight" in _keys(config, first_k_dense_replace=1)
    assert "model.layers.0.mlp.gate.weight" in _keys(config, first_k_dense_replace=0)
    assert random_ling_state_dict({**config, "num_shared_experts": 0}, 0)[
        "model.layers.1.mlp.shared_experts.down_proj.weight"
    ].shape == (64, 0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"num_experts": 0}, "num_experts"),
        ({"num_nextn_predict_layers": -1}, "num_nextn_predict_layers"),
        ({"vocab_size": "512"}, "vocab_size"),
    ],
)
def test_bad_config_names_the_field(change, field):
    config = {**_golden_config(), **change}
    with pytest.raises(ValueError, match=field):
        ling_tensor_layout(config)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n_group": 5}, "n_group"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"topk_group": 9}, "topk_group"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"partial_rotary_factor": 0.0}, "partial_rotary"),
    ],
)
def test_bad_spec_names_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        LingDemoSpec(**change)


def test_write_demo_models_is_idempotent(tmp_path):
    paths = write_demo_models(tmp_path)
    assert paths == {name: tmp_path / name for name in ("ling", "ring", "llada2", "ming", "ming2")}
    stamps = {name: json.loads((path / STAMP_FILE).read_text()) for name, path in paths.items()}
    for name, stamp in stamps.items():
        sizes = stamp["spec"]["llm"] if name.startswith("ming") else stamp["spec"]
        assert sizes["hidden_size"] == 128 and "config.json" in stamp["files"]
        assert stamp["family"] == ("ming" if name == "ming2" else name)  # ming2: a ming-family model
    assert [stamps[name]["seed"] for name in ("ling", "ring", "llada2", "ming", "ming2")] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(paths)  # no temp folder left
    before = {name: {p.name: p.stat().st_mtime_ns for p in path.iterdir()} for name, path in paths.items()}
    write_demo_models(tmp_path)
    after = {name: {p.name: p.stat().st_mtime_ns for p in path.iterdir()} for name, path in paths.items()}
    assert after == before
    ring = paths["ring"]
    (ring / STAMP_FILE).write_text(json.dumps({**stamps["ring"], "writer_version": -1}))
    write_demo_models(tmp_path)  # only the stale folder is rewritten
    assert json.loads((ring / STAMP_FILE).read_text()) == stamps["ring"]
    assert {p.name: p.stat().st_mtime_ns for p in paths["ling"].iterdir()} == before["ling"]
    assert {p.name: p.stat().st_mtime_ns for p in ring.iterdir()} != before["ring"]


def test_demo_models_are_known_families():
    assert [m.name for m in DEMO_MODELS] == ["ling", "ring", "llada2", "ming", "ming2"]
    assert {m.family for m in DEMO_MODELS} <= set(known_families())


@pytest.mark.parametrize("name", ["ling", "ring", "llada2", "ming", "ming2"])
def test_write_demo_models_keeps_foreign_folders(tmp_path, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "mine.txt").write_text("not a demo")
    with pytest.raises(ValueError, match="not a bailing demo checkpoint"):
        write_demo_models(tmp_path)
    assert (tmp_path / name / "mine.txt").read_text() == "not a demo"


# ---- Ring -----------------------------------------------------------------------------------
def test_ring_differs_from_ling_in_template_eos_and_weights(demo_ckpt, demo_ring, tmp_path):
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (demo_ring / name).read_bytes() == (demo_ckpt / name).read_bytes(), name
    config = json.loads((demo_ring / "config.json").read_text())
    assert config["architectures"] == ["BailingMoeV2ForCausalLM"]
    ling_cfg, ring_cfg = (
        json.loads((d / "tokenizer_config.json").read_text()) for d in (demo_ckpt, demo_ring)
    )
    assert (ling_cfg["eos_token"], ring_cfg["eos_token"]) == ("<|role_end|>", "<|endoftext|>")
    assert ring_cfg["chat_template"] != ling_cfg["chat_template"]
    assert "<|role_end|>" in ring_cfg["additional_special_tokens"]
    ring_head = _read_checkpoint(demo_ring)["lm_head.weight"]
    assert ring_head.ne(_read_checkpoint(demo_ckpt)["lm_head.weight"]).any()
    again = write_ring_checkpoint(tmp_path / "ring")
    assert torch.equal(_read_checkpoint(again)["lm_head.weight"], ring_head)  # default seed 1, as demo_ring


@pytest.fixture(scope="module")
def ring_llm(demo_ring):
    pytest.importorskip("engine")
    from engine.llm import LLM

    return LLM(demo_ring)


def _greedy(max_tokens: int):
    from engine import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def test_ring_loads_and_renders_the_upstream_prompt(ring_llm):
    tok = demo_tokenizer()
    eot, role_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|role_end|>")
    assert ring_llm.eos_token_ids == {eot, role_end}
    render = ring_llm.tokenizer.apply_chat_template
    assert render(RING_EXAMPLE, tokenize=False, add_generation_prompt=True) == RING_PROMPT
    # Like the upstream template, the switch is ignored: the prompt always opens the think block.
    assert (
        render(RING_EXAMPLE, tokenize=False, add_generation_prompt=True, enable_thinking=False) == RING_PROMPT
    )
    assert render(RING_EXAMPLE, tokenize=False) == RING_PROMPT.removesuffix("<role>ASSISTANT</role><think>\n")
    out = ring_llm.chat(RING_EXAMPLE, _greedy(3))[0]
    assert out.prompt == RING_PROMPT and 0 < len(out.token_ids) <= 3


def test_ring_template_roles_and_content_parts(ring_llm):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
        {"role": "assistant", "content": "4"},
        {"role": "tool", "content": "{}"},
        {"role": "user", "content": "Thanks"},
    ]
    text = ring_llm.tokenizer.apply_chat_template(messages, tokenize=False)
    expected = (
        "<role>HUMAN</role>What is 2+2?<role>ASSISTANT</role>4"
        "<role>OBSERVATION</role>{}<role>HUMAN</role>Thanks"
    )
    assert text == expected and "<|role_end|>" not in text
    image = [{"role": "user", "content": [{"type": "image", "url": "x.png"}]}]
    with pytest.raises(Exception, match="only text content parts"):
        ring_llm.tokenizer.apply_chat_template(image, tokenize=False)
