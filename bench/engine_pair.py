"""The two engines of the engine benchmarks side by side on one checkpoint: ours (`engine.LLM`) and
transformers' `Glm4MoeForCausalLM` (greedy `generate` in left-padded static batches), with seeded
token-id prompts, timing that syncs the device, and the check that both produce the same tokens.
Used by bench/engine.py, bench/curves.py and bench/sampling.py."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.harness import log
from engine import LLM, SamplingParams
from engine.loader import load_state_dict
from models.ling.glm4moe import load_glm4moe_reference

GPU_KV_CACHE_BYTES = 8 << 30  # our engine's KV cache on a GPU (64 x 512 tokens of Ling-mini need 1.3 GB)
TOKEN_RANGE = (100, 30000)  # prompt ids: clear of the low ids and of the (padded) vocab's tail


@dataclasses.dataclass
class Engines:
    """Both engines on the same checkpoint; `config` is its config.json."""

    ours: LLM
    baseline: torch.nn.Module
    device: torch.device
    config: dict[str, Any]
    pad_id: int
    load_s: dict[str, float]


def load_engines(
    folder: Path,
    device: str | torch.device = "cpu",
    ours_dtype: str | None = None,
    compile_decode: bool | None = None,
    engine_config: dict[str, Any] | None = None,
) -> Engines:
    """Ours: LLM (`ours_dtype`; default fp32 on CPU, its bf16 default on GPU; "auto": the engine's
    choice), its decode graph on or off (None: the engine's default). Baseline: Glm4Moe, fp32 on
    CPU, bf16 on GPU."""
    device = torch.device(device)
    gpu = device.type == "cuda"
    t0 = time.perf_counter()
    # On a GPU our engine would give 85% of the free memory to its KV cache; leave room for the baseline.
    kv: dict[str, Any] = {"kv_cache_bytes": GPU_KV_CACHE_BYTES} if gpu else {}
    kv.update(engine_config or {})
    if compile_decode is not None:
        kv["compile_decode"] = compile_decode
    dtype = ours_dtype or (None if gpu else "float32")
    ours = LLM(folder, device=device, dtype=None if dtype == "auto" else dtype, **kv)
    if not ours.engine.wait_compiled():  # its decode graph compiles in the background
        print("warning: the decode graph did not compile; our decode steps run eager", file=sys.stderr)
    t1 = time.perf_counter()
    config = json.loads((folder / "config.json").read_text())
    ref_dtype = torch.bfloat16 if gpu else torch.float32
    baseline = load_glm4moe_reference(config, load_state_dict(folder), ref_dtype).to(device)
    baseline.generation_config.eos_token_id = None  # run to max_new_tokens, like ours with ignore_eos
    load_s = {"ours": t1 - t0, "baseline": time.perf_counter() - t1}
    return Engines(ours, baseline, device, config, int(config.get("pad_token_id") or 0), load_s)


def run_ours(eng: Engines, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    """Greedy completions from our engine: one call, one SamplingParams per request."""
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in max_tokens]
    return [out.token_ids for out in eng.ours.generate(prompts, params)]


@torch.inference_mode()
def _baseline_batch(eng: Engines, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    width, new = max(map(len, prompts)), max(max_tokens)  # the batch runs until its longest request
    ids = torch.full((len(prompts), width), eng.pad_id, dtype=torch.long)  # (B, S) left-padded
    mask = torch.zeros_like(ids)  # (B, S)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    out = eng.baseline.generate(
        ids.to(eng.device),
        attention_mask=mask.to(eng.device),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=eng.pad_id,
    )  # (B, S + new)
    return [row[width : width + n] for row, n in zip(out.tolist(), max_tokens, strict=True)]


def run_baseline(
    eng: Engines, prompts: list[list[int]], max_tokens: list[int], batch_size: int
) -> list[list[int]]:
    """Greedy completions from Glm4Moe.generate: static batches of `batch_size` in input order."""
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        out += _baseline_batch(eng, prompts[i : i + batch_size], max_tokens[i : i + batch_size])
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(eng: Engines, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(seconds, result) of fn(eng, *args), synchronising the device around it."""
    sync(eng.device)
    t0 = time.perf_counter()
    result = fn(eng, *args)
    sync(eng.device)
    return time.perf_counter() - t0, result


def warm_up(eng: Engines) -> None:
    prompts = random_prompts([16, 8], 999, eng.config)
    run_ours(eng, prompts, [4, 4])
    run_baseline(eng, prompts, [4, 4], 2)


def random_lengths(n: int, bounds: tuple[int, int], seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(*bounds) for _ in range(n)]


def random_prompts(lengths: list[int], seed: int, config: dict[str, Any]) -> list[list[int]]:
    """Prompts of these lengths, ids uniform in TOKEN_RANGE (cut to the vocab) minus bos/eos/pad.

    Every timed run gets prompts of its own seed: our engine caches prefixes, so a repeated prompt
    would skip its prefill. Same lengths, other ids: the same work for both engines.
    """
    special = {config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    low, high = TOKEN_RANGE[0], min(TOKEN_RANGE[1], config["vocab_size"] - 1)
    rng = random.Random(seed)
    ids = [[rng.randrange(low, high) for _ in range(n)] for n in lengths]
    return [[t + 1 if t in special else t for t in p] for p in ids]


def check_same(name: str, ours: list[list[int]], base: list[list[int]], n: int) -> int:
    """How many requests' first `n` greedy tokens differ; warns loudly when any do."""
    bad = sum(o[:n] != b[:n] for o, b in zip(ours, base, strict=True))
    if bad:
        log(f"!!!!! WARNING {name}: {bad}/{len(ours)} requests differ in their first {n} greedy tokens")
    return bad
