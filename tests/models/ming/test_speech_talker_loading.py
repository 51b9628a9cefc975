"""Loading the golden `talker/` strictly: all 105 checkpoint keys map to BailingTalker2 and load
bit-equal; a missing, unexpected or mis-shaped tensor names itself; bad config values name the field."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError
from models.ming.speech.talker_config import TalkerConfig
from models.ming.speech.talker_loading import load_talker, load_talker_tokenizer, read_talker_config
from tests.models.ming.speech_golden import TALKER, available, expected

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
CPU = torch.device("cpu")


@pytest.fixture()
def talker_copy(tmp_path):
    dst = tmp_path / "talker"
    shutil.copytree(TALKER, dst, ignore=shutil.ignore_patterns("vae"))
    return dst


def edit_weights(folder, drop=(), add=None, reshape=None):
    path = folder / "model.safetensors"
    state = load_file(path)
    for key in drop:
        del state[key]
    state.update(add or {})
    for key, shape in (reshape or {}).items():
        state[key] = torch.zeros(shape)
    save_file(state, path)


def edit_config(path, section=None, **changes):
    data = json.loads(path.read_text())
    (data[section] if section else data).update(changes)
    path.write_text(json.dumps(data))


def test_all_keys_load_bit_equal():
    talker = load_talker(TALKER, CPU, torch.float32)
    state = talker.state_dict()
    assert sorted(state) == sorted(expected()["talker_state_dict_keys"])
    assert len(state) == 105
    stored = load_file(TALKER / "model.safetensors")
    for key, value in stored.items():
        assert torch.equal(state[key], value), key
    assert not talker.training


def test_bf16_load_keeps_dtype():
    talker = load_talker(TALKER, CPU, torch.bfloat16)
    assert talker.cfm.model.x_embedder.weight.dtype == torch.bfloat16
    assert talker.model.rotary_emb.inv_freq.dtype == torch.float32  # rebuilt, computed


@pytest.mark.parametrize(
    "key",
    [
        "cfm.model.blocks.1.attn.to_q.weight",
        "aggregator.rotary_embed.inv_freq",
        "model.norm.weight",
        "spk_head.bias",
    ],
)
def test_missing_key_names_itself(talker_copy, key):
    edit_weights(talker_copy, drop=[key])
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_talker(talker_copy, CPU, torch.float32)


def test_unexpected_key_names_itself(talker_copy):
    edit_weights(talker_copy, add={"cfm.model.spk_embedder.weight": torch.zeros(64, 192)})
    with pytest.raises(CheckpointError, match=r"cfm\.model\.spk_embedder\.weight"):
        load_talker(talker_copy, CPU, torch.float32)


@pytest.mark.parametrize(
    ("key", "shape"), [("stop_head.weight", (3, 64)), ("aggregator.final_layer.linear.weight", (32, 64))]
)
def test_misshaped_key_names_itself(talker_copy, key, shape):
    edit_weights(talker_copy, reshape={key: shape})
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_talker(talker_copy, CPU, torch.float32)


def test_wrong_rotary_buffer_is_refused(talker_copy):
    edit_weights(
        talker_copy, add={"cfm.model.rotary_embed.inv_freq": 1.0 / 500.0 ** (torch.arange(0, 16, 2) / 16)}
    )
    with pytest.raises(CheckpointError, match=r"cfm\.model\.rotary_embed\.inv_freq"):
        load_talker(talker_copy, CPU, torch.float32)


def test_config_reads_golden():
    cfg, llm = read_talker_config(TALKER)
    assert (cfg.steps, cfg.patch_size, cfg.history_patch_size, cfg.latent_dim) == (10, 4, 32, 64)
    assert (cfg.flow.hidden_size, cfg.flow.depth, cfg.flow.num_heads, cfg.flow.head_dim) == (64, 2, 4, 16)
    assert cfg.aggregator.mlp_hidden == 256 and cfg.llm_hidden_size == llm["hidden_size"] == 64


@pytest.mark.parametrize(
    ("section", "change", "field"),
    [
        (None, {"patch_size": 0}, "patch_size"),
        (None, {"history_patch_size": 2}, "history_patch_size"),
        (None, {"steps": "10"}, "steps"),
        ("flowmodel", {"num_heads": 5}, "num_heads"),
        ("flowmodel", {"llm_cond_dim": 896}, "llm_cond_dim"),
        ("flowmodel", {"qk_norm": "layer_norm"}, "qk_norm"),
        ("flowmodel", {"in_channels": 32}, "in_channels"),
        ("flowmodel", {"spk_dim": 192}, "spk_dim"),
        ("flowmodel", {"use_adaln": True}, "use_adaln"),
        ("aggregator", {"depth": -1}, "depth"),
        ("aggregator", {"pe_attn_head": 9}, "pe_attn_head"),
        ("aggregator", {"attn_backend": "xformers"}, "attn_backend"),
    ],
)
def test_bad_config_names_the_field(section, change, field):
    data = json.loads((TALKER / "config.json").read_text())
    (data[section] if section else data).update(change)
    llm = json.loads((TALKER / "llm" / "config.json").read_text())
    with pytest.raises(ValueError, match=field):
        TalkerConfig.from_dicts(data, llm)


def test_bad_config_file_is_a_checkpoint_error(talker_copy):
    edit_config(talker_copy / "config.json", section="flowmodel", hidden_size=0)
    with pytest.raises(CheckpointError, match="hidden_size"):
        load_talker(talker_copy, CPU, torch.float32)


def test_missing_tokenizer_is_reported(talker_copy):
    (talker_copy / "llm" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_talker_tokenizer(talker_copy)
