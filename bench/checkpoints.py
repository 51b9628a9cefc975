"""The benchmarks' checkpoints: the bench model (random fp32 BailingMoeV2, `.bailing/bench/ling-bench`,
written once by the demo writer and stamped) and, on a GPU, real model shapes with random bf16
weights (`--real-config ling-mini`, written shard by shard)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from bailing.demo.ling_config import LingDemoSpec, ling_config_dict
from bailing.demo.safetensors_writer import INDEX_FILE, plan_shards
from bailing.demo.writer import WRITER_VERSION, ling_tensor_layout, write_ling_checkpoint
from bench.harness import REPO, log

BENCH_ROOT = REPO / ".bailing" / "bench"
STAMP_NAME = "bench_stamp.json"
BENCH_SPEC = LingDemoSpec(
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    num_experts=32,
    num_experts_per_tok=4,
    n_group=4,
    topk_group=2,
    moe_intermediate_size=256,
    num_shared_experts=1,
    first_k_dense_replace=1,
    max_position_embeddings=4096,
)
BENCH_OVERRIDES = {"vocab_size": 32768}  # the writer sizes vocab to its 2k demo tokenizer otherwise
# Ling-mini-2.0 (spec bailing_moe_v2.md section 6): sizes, then vocab and special ids.
REAL_SPECS = {
    "ling-mini": LingDemoSpec(
        hidden_size=2048,
        intermediate_size=5120,
        num_hidden_layers=20,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=256,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        moe_intermediate_size=512,
        num_shared_experts=1,
        first_k_dense_replace=1,
        max_position_embeddings=32768,
    )
}
REAL_IDS = {"vocab_size": 157184, "bos_id": 156891, "eos_id": 156892, "pad_id": 156892}


def stamp_matches(folder: Path, stamp: dict[str, Any]) -> bool:
    try:
        found = json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    files = found.pop("files", [])
    return found == stamp and bool(files) and all((folder / f).is_file() for f in files)


def publish(tmp: Path, folder: Path, stamp: dict[str, Any]) -> Path:
    """Stamp the finished `tmp` folder and rename it to `folder` (replacing an older bench folder)."""
    files = sorted(p.name for p in tmp.iterdir() if p.is_file())
    (tmp / STAMP_NAME).write_text(json.dumps({**stamp, "files": files}, indent=1))
    if folder.exists():
        if not (folder / STAMP_NAME).is_file():
            raise SystemExit(f"{folder} exists and is not a bench checkpoint; refusing to replace it")
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def ensure_bench_checkpoint(
    folder: Path,
    spec: LingDemoSpec = BENCH_SPEC,
    overrides: dict | None = None,
    seed: int = 0,
    *,
    with_tokenizer: bool = False,
) -> Path:
    """Write the fp32 random-weight bench checkpoint to `folder` unless a matching stamp is there.

    `with_tokenizer` adds the demo tokenizer and chat template (for benchmarks that send text).
    """
    overrides = BENCH_OVERRIDES if overrides is None else overrides
    stamp = {"writer": WRITER_VERSION, "spec": dataclasses.asdict(spec), "overrides": overrides, "seed": seed}
    if with_tokenizer:
        stamp["tokenizer"] = True
    if stamp_matches(folder, stamp):
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_ling_checkpoint(
        tmp,
        spec,
        seed=seed,
        dtype=torch.float32,
        max_shard_bytes=200_000_000,
        with_tokenizer=with_tokenizer,
        config_overrides=overrides,
    )
    return publish(tmp, folder, stamp)


def _random_tensor(shape: tuple[int, ...], init: str, gen: torch.Generator) -> torch.Tensor:
    """The demo writer's init (linear std 1/sqrt(fan_in), norms ~1), drawn on the generator's device."""
    noise = torch.randn(shape, generator=gen, device=gen.device)
    scale = {"embedding": 1.0, "norm": 0.1, "bias": 0.1}.get(init, 1.0 / math.sqrt(shape[-1]))
    out = noise.mul_(scale).add_(1.0) if init == "norm" else noise.mul_(scale)
    return out.to(torch.bfloat16).cpu()


def ensure_real_checkpoint(folder: Path, name: str, device: torch.device, seed: int = 0) -> Path:
    """Write a real-size random bf16 checkpoint shard by shard (one shard in memory at a time)."""
    spec = REAL_SPECS[name]
    stamp = {"real": name, "spec": dataclasses.asdict(spec), "ids": REAL_IDS, "seed": seed}
    if stamp_matches(folder, stamp):
        return folder
    ids = dict(REAL_IDS)
    config = ling_config_dict(spec, vocab_size=ids.pop("vocab_size"), **ids)
    layout = {s.key: s for s in ling_tensor_layout(config)}
    shards = plan_shards({k: 2 * math.prod(s.shape) for k, s in layout.items()}, 4_000_000_000)
    names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for i, (fname, keys) in enumerate(zip(names, shards, strict=True)):
        log(f"writing {fname} ({len(keys)} tensors)")
        gen = torch.Generator(device=device).manual_seed(seed * 100_003 + i)
        shard = {k: _random_tensor(layout[k].shape, layout[k].init, gen) for k in keys}
        save_file(shard, str(tmp / fname), metadata={"format": "pt"})
        del shard
    weight_map = {k: fname for fname, keys in zip(names, shards, strict=True) for k in keys}
    total = sum(2 * math.prod(s.shape) for s in layout.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return publish(tmp, folder, stamp)
