"""LLaDA2MoeModelLM against the official LLaDA2 code's golden logits (float32), and Ling unaffected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.errors import CheckpointError
from engine.layers.attention import BlockCausalContext, NoCacheContext
from engine.layers.base import materialize
from engine.loader import load_weights
from engine.model_base import CausalLM
from models.family import known_families
from models.ling.model import BailingMoeV2ForCausalLM
from models.llada2.model import LLaDA2MoeModelLM
from models.registry import resolve_architecture
from tests.models.llada2_golden import CHECKPOINT, expected, load_tiny, reference_tensors

MAX_ABS = 1e-4
BLOCK = 8  # the golden block-causal logits use B = 8


@pytest.fixture(scope="module")
def model():
    return load_tiny()


@pytest.fixture(scope="module")
def ref():
    return reference_tensors()


def _logits(model: CausalLM, ids: torch.Tensor, ctx=None) -> torch.Tensor:
    with torch.inference_mode():
        hidden = model(ids, torch.arange(ids.shape[0]), ctx)
        return model.compute_logits(hidden)  # (T, V)


@pytest.fixture()
def copy_with(tmp_path: Path):
    """A copy of tiny-llada2 with config.json fields changed."""

    def make(**changes: object) -> Path:
        dst = tmp_path / "tiny"
        shutil.copytree(CHECKPOINT, dst)
        for p in dst.iterdir():
            p.chmod(0o644)
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(changes)
        (dst / "config.json").write_text(json.dumps(cfg))
        return dst

    return make


@pytest.mark.parametrize("kind", ["blockcausal", "bidirectional"])
@pytest.mark.parametrize("i", [0, 1])
def test_logits_match_official(model, ref, kind, i):
    ctx = BlockCausalContext(BLOCK if kind == "blockcausal" else None)
    got = _logits(model, ref[f"input_ids_{i}"], ctx)
    diff = (got - ref[f"logits_{kind}_{i}"]).abs().max().item()
    assert diff <= MAX_ABS, f"max |Δ| = {diff}"


def test_default_context_is_bidirectional(model, ref):
    torch.testing.assert_close(_logits(model, ref["input_ids_1"]), ref["logits_bidirectional_1"])


def test_loads_strictly_every_checkpoint_key():
    keys = set(expected()["checkpoint_keys"])
    model = LLaDA2MoeModelLM.from_config_dict(json.loads((CHECKPOINT / "config.json").read_text()))
    materialize(model, torch.float32, "cpu")
    assert set(model.weight_targets()) == keys
    assert load_weights(model, CHECKPOINT) == keys


def test_architecture_resolves_through_registry_and_family(model):
    assert resolve_architecture("LLaDA2MoeModelLM") is LLaDA2MoeModelLM
    assert type(model) is LLaDA2MoeModelLM
    family = known_families()["llada2"]
    assert family.architectures == ("LLaDA2MoeModelLM",) and family.reasoning is None
    assert LLaDA2MoeModelLM.diffusion is True
    assert BailingMoeV2ForCausalLM.diffusion is False and CausalLM.diffusion is False
    assert model.mask_token_id == expected()["mask_id"]  # the golden config.json carries one


def test_config_keys_llada2_ignores_do_not_change_the_model(copy_with, ref):
    """QK-norm, expert bias, sigmoid + renormalised routing are fixed; MTP never exists."""
    folder = copy_with(
        use_qk_norm=False,
        num_nextn_predict_layers=1,
        moe_router_enable_expert_bias=False,
        score_function="softmax",
        norm_topk_prob=False,
    )
    got = _logits(load_tiny(folder), ref["input_ids_0"], BlockCausalContext(BLOCK))
    assert (got - ref["logits_blockcausal_0"]).abs().max().item() <= MAX_ABS


def test_mask_token_id_is_optional_and_checked(copy_with):
    cfg = json.loads((CHECKPOINT / "config.json").read_text())
    cfg.pop("mask_token_id")
    assert LLaDA2MoeModelLM.from_config_dict(cfg).mask_token_id is None
    with pytest.raises(CheckpointError, match="mask_token_id"):
        load_tiny(copy_with(mask_token_id=512))


def test_ling_class_with_the_same_weights_is_unaffected(copy_with, model, ref):
    """Ling's class loads the LLaDA2 weights strictly, stays causal by default and non-diffusion."""
    ling = load_tiny(copy_with(architectures=["BailingMoeV2ForCausalLM"], model_type="bailing_moe_v2"))
    assert type(ling) is BailingMoeV2ForCausalLM and not ling.diffusion
    ids = ref["input_ids_0"]
    got = _logits(ling, ids, BlockCausalContext(BLOCK))
    assert (got - ref["logits_blockcausal_0"]).abs().max().item() <= MAX_ABS
    causal = _logits(ling, ids)  # Ling's default context: plain causal attention
    torch.testing.assert_close(causal, _logits(ling, ids, NoCacheContext()), rtol=0, atol=0)
    torch.testing.assert_close(causal, _logits(model, ids, BlockCausalContext(1)), rtol=1e-5, atol=1e-5)
