"""Block-FP8 checkpoints: they load strictly, dequantise exactly as an independent reference does, and
the model they give stays within the quantisation error of its bf16 original."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bailing.demo.fp8_writer import QUANTISED, write_fp8_checkpoint
from bailing.demo.writer import random_ling_state_dict, write_safetensors_checkpoint
from engine import LLM, CheckpointError
from engine.fp8 import FP8_MAX, dequantize, quantize
from engine.loader import Shard, WeightTarget, load_weights

BLOCK = (16, 16)  # smaller than the tiny model's matrices, so weights span several (and partial) blocks


def reference_dequantize(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]
) -> torch.Tensor:
    """Written independently of engine.fp8: loop over the scale grid, scale each block's slice."""
    out = weight.to(torch.float32).clone()
    bo, bi = block
    for r in range(scale_inv.shape[0]):
        for c in range(scale_inv.shape[1]):
            out[r * bo : (r + 1) * bo, c * bi : (c + 1) * bi] *= float(scale_inv[r, c])
    return out


@pytest.fixture(scope="module")
def tiny(golden_dir):
    config = json.loads((golden_dir / "tiny-bailing" / "config.json").read_text())
    return config, random_ling_state_dict(config, seed=7)


@pytest.fixture(scope="module")
def fp8_folder(tiny, tmp_path_factory) -> Path:
    config, state = tiny
    return write_fp8_checkpoint(
        tmp_path_factory.mktemp("fp8"), config, state, block=BLOCK, max_shard_bytes=40_000
    )


def _bf16_folder(tmp: Path, config: dict, state: dict) -> Path:
    tmp.mkdir()
    (tmp / "config.json").write_text(json.dumps(config))
    write_safetensors_checkpoint(tmp, state, dtype=torch.bfloat16)
    return tmp


def test_quantize_error_is_within_e4m3_rounding():
    """Per element: |w - dq(q(w))| <= 2^-4 |w| (3 mantissa bits, round to nearest) or, in the
    subnormal range, half a subnormal step (2^-10) times the block scale."""
    torch.manual_seed(0)
    w = torch.randn(70, 45) * torch.logspace(-3, 1, 45)  # ragged blocks, columns of different scale
    q, s = quantize(w, BLOCK)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (5, 3)
    back = dequantize(q, s, BLOCK)
    scale = s.repeat_interleave(BLOCK[0], 0)[:70].repeat_interleave(BLOCK[1], 1)[:, :45]
    bound = torch.maximum(w.abs() * 2**-4, scale * 2**-10)
    assert ((back - w).abs() <= bound * 1.0001).all()
    assert torch.allclose(back.abs().amax(), w.abs().amax(), rtol=2**-4)  # the block max maps to 448
    assert float(q.float().abs().max()) == FP8_MAX


def test_dequantize_of_a_slice_equals_the_slice_of_the_dequantised_weight():
    torch.manual_seed(1)
    q, s = quantize(torch.randn(50, 40), BLOCK)
    full = reference_dequantize(q, s, BLOCK)
    rows = dequantize(q[7:29], s[7 // 16 : 28 // 16 + 1], BLOCK, origin=(7, 0))
    cols = dequantize(q[:, 13:37], s[:, 13 // 16 : 36 // 16 + 1], BLOCK, origin=(0, 13))
    assert torch.equal(rows, full[7:29]) and torch.equal(cols, full[:, 13:37])


def test_fp8_checkpoint_loads_strictly_and_equals_the_reference_dequantisation(fp8_folder):
    on_disk = {}
    for path in fp8_folder.glob("*.safetensors"):
        on_disk.update(load_file(path))
    assert len(list(fp8_folder.glob("*.safetensors"))) > 2  # sharded: scales may sit in other shards
    quantised = [k for k in on_disk if QUANTISED.search(k)]
    assert quantised and all(on_disk[k].dtype == torch.float8_e4m3fn for k in quantised)
    assert on_disk["lm_head.weight"].dtype == torch.bfloat16  # embeddings, routers, lm_head stay float
    llm = LLM(fp8_folder, dtype=torch.float32)
    params = llm.model.weight_targets()
    for key in quantised:
        if key.startswith("model.layers.4."):
            continue  # the MTP layer, skipped at load
        want = reference_dequantize(on_disk[key], on_disk[key + "_scale_inv"], BLOCK)
        assert torch.equal(params[key].dest, want), key
    router = "model.layers.1.mlp.gate.weight"
    assert torch.equal(params[router].dest, on_disk[router].float())


@pytest.mark.parametrize("block", [BLOCK, (128, 128)])
def test_fp8_logits_stay_within_the_quantisation_error_of_the_bf16_original(tiny, tmp_path, block):
    """The bound, per position, on the relative L2 error |dlogits| / |logits|. e4m3 rounds each weight
    to within 2^-4 of itself (rms ~2^-4/sqrt(3) = 3.6%); a projection's output inherits about that,
    and the ~16 projections in sequence of this 4-layer model add up in quadrature to ~14%, so the
    median position must stay under 0.15. MoE routing amplifies the tail (a near-tie that flips
    swaps an expert): the 90th percentile must stay under 0.4 and the greedy token agree at >= 70%
    of positions. Measured: median 0.086 / 0.080, p90 0.26 / 0.32, agreement 79% / 81% (16x16 /
    128x128 blocks). A wrong scale layout or a lost scale gives errors of order 1."""
    config, state = tiny
    bf16 = _bf16_folder(tmp_path / "bf16", config, state)
    fp8 = write_fp8_checkpoint(tmp_path / "fp8", config, state, block=block)
    ids = list(range(3, 60))
    want = LLM(bf16, dtype=torch.float32).logits(ids)
    got = LLM(fp8, dtype=torch.float32).logits(ids)
    rel = (got - want).norm(dim=-1) / want.norm(dim=-1)  # (T,)
    assert float(rel.median()) < 0.15 and float(rel.quantile(0.9)) < 0.4, rel
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.7
    assert float(rel.min()) > 0  # the quantisation really happened


def _rewrite(folder: Path, dest: Path, edit) -> Path:
    """Copy an FP8 folder as one file, with `edit(tensors, config)` applied."""
    dest.mkdir()
    tensors = {}
    for path in folder.glob("*.safetensors"):
        tensors.update(load_file(path))
    config = json.loads((folder / "config.json").read_text())
    edit(tensors, config)
    save_file(tensors, str(dest / "model.safetensors"))
    (dest / "config.json").write_text(json.dumps(config))
    return dest


KEY = "model.layers.1.attention.query_key_value.weight"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t, c: t.pop(KEY + "_scale_inv"), r"has no '.*query_key_value\.weight_scale_inv'"),
        (
            lambda t, c: t.update({KEY + "_scale_inv": torch.ones(2, 2)}),
            r"needs a float \[8, 4\]",
        ),
        (
            lambda t, c: t.update({"model.norm.weight_scale_inv": torch.ones(1, 1)}),
            r"no FP8 weight 'model\.norm\.weight'",
        ),
        (
            lambda t, c: c.pop("quantization_config"),
            r"is (FP8|an FP8 scale) but config\.json has no quantization_config",
        ),
        (
            lambda t, c: c["quantization_config"].update(quant_method="awq"),
            r"quant_method 'awq' is not supported",
        ),
        (
            lambda t, c: c["quantization_config"].update(weight_block_size=[128]),
            r"weight_block_size must be two positive ints",
        ),
        (lambda t, c: t.update({KEY: t[KEY].view(torch.uint8)}), r"no FP8 weight .* it scales"),
        (
            lambda t, c: t.update({KEY: t[KEY].view(torch.uint8)}) or t.pop(KEY + "_scale_inv"),
            r"expected a float dtype",
        ),
    ],
)
def test_inconsistent_fp8_checkpoints_are_refused_naming_the_problem(fp8_folder, tmp_path, edit, match):
    with pytest.raises(CheckpointError, match=match):
        LLM(_rewrite(fp8_folder, tmp_path / "bad", edit))


class _Part(torch.nn.Module):
    """A loadable stand-in for one tensor-parallel rank's part of one FP8 weight."""

    def __init__(self, shape: tuple[int, ...], shard: Shard) -> None:
        super().__init__()
        part = list(shape)
        part[shard.dim] = shard.length
        self.dest = torch.empty(part)
        self.target = WeightTarget(self.dest, shape, shard)

    def weight_targets(self):
        return {KEY: self.target}

    def ignore_checkpoint_key(self, name: str) -> bool:
        return name != KEY


@pytest.mark.parametrize("shard", [Shard(0, ((5, 23), (40, 8))), Shard(1, ((3, 30),)), Shard(0, ((64, 32),))])
def test_a_ranks_fp8_slice_reads_only_its_rows_and_dequantises_with_the_right_scales(fp8_folder, shard):
    from engine.fp8 import fp8_scheme

    config = json.loads((fp8_folder / "config.json").read_text())
    full = {}
    for path in fp8_folder.glob("*.safetensors"):
        full.update(load_file(path))
    want = reference_dequantize(full[KEY], full[KEY + "_scale_inv"], BLOCK)
    part = _Part(tuple(want.shape), shard)
    load_weights(part, fp8_folder, fp8_scheme(config))
    pieces = [want.narrow(shard.dim, s, n) for s, n in shard.ranges]
    assert torch.equal(part.dest, torch.cat(pieces, dim=shard.dim))


@pytest.mark.parametrize(("size", "expert_parallel"), [(1, False), (2, False), (2, True)])
def test_fp8_weights_kept_as_stored_give_the_dequantised_models_logits(
    fp8_folder, monkeypatch, size, expert_parallel
):
    """BAILING_FP8_WEIGHTS=keep (the GPU default): projections and experts stay float8 with their
    scales (each rank its blocks), products go through fp8_linear (here its native twin), and the
    logits equal those of the weights dequantised at load."""
    from engine.model_loader import load_model
    from engine.parallel.launch import run_local_group
    from tests.engine.parallel_cases import fp8_logits

    ids = list(range(3, 50))
    want = LLM(fp8_folder, dtype=torch.float32).logits(ids)
    monkeypatch.setenv("BAILING_FP8_WEIGHTS", "keep")
    if size == 1:
        model = load_model(fp8_folder, torch.device("cpu"), torch.float32)
        layer = model.model.layers[1]
        assert layer.attention.query_key_value.weight.dtype == torch.float8_e4m3fn
        assert (
            layer.mlp.experts.w13.dtype == torch.float8_e4m3fn
            and layer.mlp.experts.s13.dtype == torch.float32
        )
        assert model.lm_head.weight.dtype == torch.float32  # stored in bf16: not FP8
        got, kept = fp8_logits(None, str(fp8_folder), ids)
    else:
        got, kept = run_local_group(
            fp8_logits, size, str(fp8_folder), ids, expert_parallel=expert_parallel, threads=1
        )[0]
    assert kept > 0
    assert (got - want).abs().max().item() <= 1e-5
