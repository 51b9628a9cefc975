"""Strict loading: bad checkpoints get one clear error naming the problem; dtypes and shards load right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bailing.demo.writer import ling_tensor_layout, random_ling_state_dict, write_safetensors_checkpoint
from engine import LLM, CheckpointError, TokenizerError
from engine.loader import load_state_dict
from tests.conftest import edit_config

REPO = Path(__file__).resolve().parents[2]


def _write(folder: Path, config: dict, state: dict, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors_checkpoint(folder, state, **kw)
    return folder


@pytest.fixture()
def tiny(golden_dir, tmp_path):
    """(config, float32 random state dict) of the golden tiny architecture, MTP layer included."""
    config = json.loads((golden_dir / "tiny-bailing" / "config.json").read_text())
    return config, random_ling_state_dict(config, seed=3)


def test_bf16_sharded_checkpoint_gives_the_float32_result_of_its_upcast_weights(tiny, tmp_path):
    config, state = tiny
    bf16 = _write(tmp_path / "bf16", config, state, dtype=torch.bfloat16, max_shard_bytes=20_000)
    assert (bf16 / "model.safetensors.index.json").is_file()
    assert len(list(bf16.glob("model-*.safetensors"))) > 3
    upcast = {k: v.to(torch.bfloat16).float() for k, v in state.items()}
    fp32 = _write(tmp_path / "fp32", config, upcast, dtype=torch.float32)
    ids = list(range(3, 40))
    a = LLM(bf16, dtype=torch.float32).logits(ids)
    b = LLM(fp32, dtype=torch.float32).logits(ids)
    assert torch.equal(a, b)


def test_fp16_checkpoint_loads(tiny, tmp_path):
    config, state = tiny
    folder = _write(tmp_path / "fp16", config, state, dtype=torch.float16)
    llm = LLM(folder)
    assert llm.model.model.norm.weight.dtype == torch.float32
    assert llm.model.model.layers[1].mlp.gate.weight.dtype == torch.float32
    assert torch.isfinite(llm.logits([1, 2, 3])).all()


def test_bf16_compute_keeps_router_in_float32(golden_copy):
    llm = LLM(golden_copy, dtype="bfloat16")
    assert llm.model.model.norm.weight.dtype == torch.bfloat16
    assert llm.model.model.layers[1].mlp.gate.weight.dtype == torch.float32
    assert llm.model.model.layers[1].mlp.gate.expert_bias.dtype == torch.float32
    assert llm.logits([5, 6, 7]).dtype == torch.float32


def test_mtp_layers_are_skipped_but_keys_beyond_them_are_not(tiny, tmp_path):
    config, state = tiny
    assert any(k.startswith("model.layers.4.") for k in state)  # the golden layout has MTP at index L
    LLM(_write(tmp_path / "ok", config, state))
    extra = {**state, "model.layers.5.input_layernorm.weight": torch.ones(config["hidden_size"])}
    with pytest.raises(
        CheckpointError, match=r"unexpected tensor 'model\.layers\.5\.input_layernorm\.weight'"
    ):
        LLM(_write(tmp_path / "bad", config, extra))


def test_no_config_json(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        LLM(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LLM(tmp_path / "nope")


def test_unknown_architecture(golden_copy):
    edit_config(golden_copy, architectures=["LlamaForCausalLM"])
    with pytest.raises(
        CheckpointError, match="unknown architecture 'LlamaForCausalLM'.*BailingMoeV2ForCausalLM"
    ):
        LLM(golden_copy)


def test_invalid_config_value_names_the_field(golden_copy):
    edit_config(golden_copy, n_group=3)
    with pytest.raises(CheckpointError, match="n_group"):
        LLM(golden_copy)


def test_config_missing_key_takes_the_official_default_and_the_mismatch_is_named(golden_copy):
    cfg = json.loads((golden_copy / "config.json").read_text())
    del cfg["num_experts"]  # official default: 256, but the checkpoint has 16
    (golden_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.1\.mlp\.gate\.\w+'.* has shape \[16(, 64)?\], expected \[256"
    ):
        LLM(golden_copy)


def test_missing_tensor(tiny, tmp_path):
    config, state = tiny
    del state["model.layers.2.mlp.experts.7.up_proj.weight"]
    with pytest.raises(
        CheckpointError, match=r"lacks 1 tensors: \['model\.layers\.2\.mlp\.experts\.7\.up_proj"
    ):
        LLM(_write(tmp_path / "m", config, state))


def test_extra_tensor(tiny, tmp_path):
    config, state = tiny
    state["model.layers.0.attention.rotary.inv_freq"] = torch.ones(4)
    with pytest.raises(
        CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.attention\.rotary\.inv_freq'"
    ):
        LLM(_write(tmp_path / "x", config, state))


def test_wrong_shape(tiny, tmp_path):
    config, state = tiny
    state["model.layers.1.mlp.gate.weight"] = torch.zeros(16, 65)
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.1\.mlp\.gate\.weight'.*\[16, 65\], expected \[16, 64\]"
    ):
        LLM(_write(tmp_path / "s", config, state))


def test_truncated_safetensors(golden_copy):
    path = golden_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        LLM(golden_copy)


@pytest.mark.parametrize(
    "garbage", [b"", b"\x01\x02", b"\xff" * 64, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}!!"]
)
def test_corrupt_safetensors(golden_copy, garbage):
    (golden_copy / "model.safetensors").write_bytes(garbage)
    with pytest.raises(CheckpointError, match="corrupt safetensors file"):
        LLM(golden_copy)


def test_index_naming_a_missing_shard(tiny, tmp_path):
    config, state = tiny
    folder = _write(tmp_path / "sh", config, state, max_shard_bytes=50_000)
    next(iter(sorted(folder.glob("model-*.safetensors")))).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        LLM(folder)


def test_no_weights_at_all(golden_copy):
    (golden_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        LLM(golden_copy)


def test_missing_tokenizer_is_an_error_only_when_text_is_needed(golden_copy):
    llm = LLM(golden_copy)  # weights-only folder: token ids work
    assert len(llm.generate([[1, 2, 3]])[0].token_ids) > 0
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        llm.generate("hello")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        llm.chat([{"role": "user", "content": "hi"}])


def test_load_state_dict_reads_what_was_written(tiny, tmp_path):
    config, state = tiny
    folder = _write(tmp_path / "rt", config, state, dtype=torch.float32, max_shard_bytes=30_000)
    back = load_state_dict(folder)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


_MEASURE = """
import json, sys, psutil, torch
from engine.model_loader import load_model
proc = psutil.Process()
base = proc.memory_info().rss
model = load_model(sys.argv[1], torch.device("cpu"), torch.float32)
final = proc.memory_info().rss
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
peak = int(hwm.split()[1]) * 1024  # VmHWM: this exec only (ru_maxrss carries the parent's over exec)
nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"base": base, "final": final, "peak": peak, "param_bytes": nbytes}))
"""


@pytest.mark.slow
def test_streaming_load_peak_rss_under_1_3x_model_size(tmp_path):
    """A ~1 GB sharded checkpoint: peak RSS while loading stays under 1.3x the model's resident size."""
    config = (
        json.loads((REPO.parent / "shared/golden/ling-tiny/tiny-bailing/config.json").read_text())
        if (REPO.parent / "shared").is_dir()
        else None
    )
    if config is None:
        pytest.skip("needs the shared golden config")
    config.update(
        vocab_size=32768,
        hidden_size=2048,
        intermediate_size=4096,
        num_hidden_layers=3,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=16,
        moe_intermediate_size=512,
        moe_shared_expert_intermediate_size=512,
        first_k_dense_replace=1,
        num_nextn_predict_layers=0,
    )
    state = {spec.key: torch.zeros(spec.shape) for spec in ling_tensor_layout(config)}
    folder = _write(tmp_path / "big", config, state, dtype=torch.float32, max_shard_bytes=300_000_000)
    del state
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert 0.9e9 < size < 1.3e9, size
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(folder)], capture_output=True, text=True, check=True, cwd=REPO
    )
    m = json.loads(out.stdout.strip().splitlines()[-1])
    resident = m["final"] - m["base"]
    assert resident > 0.9 * m["param_bytes"]
    assert m["peak"] - m["base"] < 1.3 * resident, m
