"""The demo LLaDA2 checkpoint: upstream layout, strict load, `<|mask|>` from the tokenizer, confident."""

from __future__ import annotations

import json

import pytest
import torch

from bailing.demo.ling_weights import ling_tensor_layout
from bailing.demo.llada2 import MASK_TOKEN, write_llada2_checkpoint
from bailing.demo.writer import LingDemoSpec
from engine.diffusion import DiffusionParams
from engine.loader import load_state_dict
from engine.model_loader import load_model
from engine.tokenizer import load_tokenizer
from models.llada2.model import LLaDA2MoeModelLM
from tests.models.llada2_reference import reference_generate


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_llada2_checkpoint(tmp_path_factory.mktemp("demo") / "llada2")


def test_config_is_llada2_without_a_mask_field(demo):
    config = json.loads((demo / "config.json").read_text())
    assert config["architectures"] == ["LLaDA2MoeModelLM"] and config["model_type"] == "llada2_moe"
    assert not any("mask" in key for key in config)
    for absent in ("use_qk_norm", "num_nextn_predict_layers", "auto_map"):
        assert absent not in config
    keys = {spec.key for spec in ling_tensor_layout(config)}
    assert set(load_state_dict(demo)) == keys


def test_mask_token_comes_from_the_tokenizer(demo):
    tok = load_tokenizer(demo)
    mask = tok.convert_tokens_to_ids(MASK_TOKEN)
    assert mask is not None and mask != tok.unk_token_id and tok.decode([mask]) == MASK_TOKEN
    assert (
        MASK_TOKEN in json.loads((demo / "special_tokens_map.json").read_text())["additional_special_tokens"]
    )
    assert tok.encode(MASK_TOKEN) == [mask]
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<role>ASSISTANT</role>") and "<role>HUMAN</role>hi<|role_end|>" in text


def test_loads_strictly_and_commits_several_tokens_per_step(demo):
    model = load_model(demo, torch.device("cpu"), torch.float32)
    assert type(model) is LLaDA2MoeModelLM and model.mask_token_id is None
    tok = load_tokenizer(demo)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Tell me a story about a cat."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    params = DiffusionParams(
        block_length=32,
        threshold=0.9,
        mask_token_id=tok.convert_tokens_to_ids(MASK_TOKEN),
        eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    gen = reference_generate(model, tok.encode(text), params, 64)
    decoded = sum(len(s.positions) for s in gen.steps)
    assert decoded / gen.nfe >= 2, [len(s.positions) for s in gen.steps]


def test_rejects_mtp_layers(tmp_path):
    with pytest.raises(ValueError, match="num_nextn_predict_layers"):
        write_llada2_checkpoint(tmp_path / "x", LingDemoSpec(num_nextn_predict_layers=1))
