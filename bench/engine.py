"""Engine benchmark: our `engine.LLM` vs transformers' `Glm4MoeForCausalLM.generate`, same weights, greedy.

Checkpoint (`.bailing/bench/ling-bench`, written once by the demo writer; random fp32 weights, 131.9M
params, 0.53 GB): BailingMoeV2 with vocab 32768, hidden 512, 8 layers (layer 0 dense with intermediate
1408; layers 1-7 MoE: 32 experts of width 256, top-4 within the best 2 of 4 groups, 1 shared expert),
8 query / 2 KV heads of dim 64, max positions 4096. `--real-config ling-mini` (GPU only) writes
Ling-mini-2.0's shapes instead (16.26B params, random bf16 drawn on the GPU, 33 GB) to
`.bailing/bench/ling-mini`. Options: --threads N, --repeats N (timed runs per side, default 2).
Scenarios use seeded token-id prompts; both engines run in this process, alternating, one warm-up each:
(a) offline: 64 prompts of 32-256 tokens, 128 new tokens each -> generated tokens/s;
(b) batch 1: time to first token at a 256-token prompt; decode latency (t(1 + N) - t(1)) / N, N = 64;
(c) mixed: 64 prompts, max_tokens uniform in 8-256 -> useful tokens/s;
plus how far batch-1 decode is from the memory-bandwidth floor (active weight bytes / copy bandwidth).
The baseline runs left-padded static batches in input order at its best batch size; a batch runs
until its longest request. Prints a markdown table and writes bench/results/engine-<device>[-quick].json.
Usage: python -m bench.engine [--quick] [--json] [--device cuda] [--real-config ling-mini]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from bailing.demo.ling_config import LingDemoSpec, ling_config_dict
from bailing.demo.safetensors_writer import INDEX_FILE, plan_shards
from bailing.demo.writer import WRITER_VERSION, ling_tensor_layout, write_ling_checkpoint
from engine import LLM, SamplingParams
from engine.loader import load_state_dict
from engine.model_loader import cpu_has_bf16_arithmetic
from models.ling.glm4moe import load_glm4moe_reference

REPO = Path(__file__).resolve().parents[1]
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
GPU_KV_CACHE_BYTES = 8 << 30  # our engine's KV cache on a GPU (64 x 512 tokens of Ling-mini need 1.3 GB)
TOKEN_RANGE = (100, 30000)  # prompt ids: clear of the low ids and of the (padded) vocab's tail


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Request counts and lengths of one benchmark run."""

    prompts: int = 64
    prompt_len: tuple[int, int] = (32, 256)
    new_tokens: int = 128
    mixed_max_tokens: tuple[int, int] = (8, 256)
    ttft_prompt: int = 256
    decode_tokens: int = 64
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    search_new_tokens: int = 16  # the baseline's batch-size search runs every request this long
    repeats: int = 2  # timed runs per engine and scenario (alternating); the best counts
    check_tokens: int = 8  # greedy tokens that must agree between the engines


FULL = Sizes()
QUICK = Sizes(prompts=16, new_tokens=32, mixed_max_tokens=(8, 64), decode_tokens=16, batch_sizes=(8, 16))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- checkpoints


def _stamp_matches(folder: Path, stamp: dict[str, Any]) -> bool:
    try:
        found = json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    files = found.pop("files", [])
    return found == stamp and bool(files) and all((folder / f).is_file() for f in files)


def _publish(tmp: Path, folder: Path, stamp: dict[str, Any]) -> Path:
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
    if _stamp_matches(folder, stamp):
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
    return _publish(tmp, folder, stamp)


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
    if _stamp_matches(folder, stamp):
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
    return _publish(tmp, folder, stamp)


# ---------------------------------------------------------------- the two engines


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(eng: Engines, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(seconds, result) of fn(eng, *args), synchronising the device around it."""
    _sync(eng.device)
    t0 = time.perf_counter()
    result = fn(eng, *args)
    _sync(eng.device)
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


# ---------------------------------------------------------------- scenarios


def best_batch_size(
    eng: Engines, prompts: list[list[int]], max_tokens: list[int], sizes: Sizes
) -> tuple[int, dict[int, float]]:
    """The baseline's fastest batch size (useful tokens/s) over `sizes.batch_sizes`, requests capped
    at `sizes.search_new_tokens` new tokens (relative lengths kept) so the search stays short."""
    scale = min(1.0, sizes.search_new_tokens / max(max_tokens))
    capped = [max(1, round(n * scale)) for n in max_tokens]
    rates = {}
    for bs in sizes.batch_sizes:
        seconds, _ = timed(eng, run_baseline, prompts, capped, bs)
        rates[bs] = sum(capped) / seconds
        log(f"  baseline batch size {bs}: {rates[bs]:.1f} useful tok/s")
    return max(rates, key=rates.get), rates


def throughput_scenario(
    eng: Engines, name: str, lengths: list[int], max_tokens: list[int], sizes: Sizes, seed: int
) -> dict[str, Any]:
    """Useful (requested) tokens/s of both engines on the same requests; best of `sizes.repeats`."""
    warm_up(eng)
    bs, search = best_batch_size(eng, random_prompts(lengths, seed, eng.config), max_tokens, sizes)
    ours_s, base_s, bad, same = [], [], 0, 0
    for r in range(1, sizes.repeats + 1):
        prompts = random_prompts(lengths, seed + r, eng.config)
        t, ours = timed(eng, run_ours, prompts, max_tokens)
        ours_s.append(t)
        t, base = timed(eng, run_baseline, prompts, max_tokens, bs)
        base_s.append(t)
        log(f"  {name}: ours {ours_s[-1]:.2f} s, baseline {base_s[-1]:.2f} s")
        bad += check_same(name, ours, base, sizes.check_tokens)
        same += sum(o == b for o, b in zip(ours, base, strict=True))
    useful = sum(max_tokens)
    ours_rate, base_rate = useful / min(ours_s), useful / min(base_s)
    return {
        f"{name}_ours_tok_s": ours_rate,
        f"{name}_baseline_tok_s": base_rate,
        f"{name}_throughput_ratio": ours_rate / base_rate,
        f"{name}_baseline_batch_size": bs,
        f"{name}_batch_size_search_tok_s": search,
        f"{name}_useful_tokens": useful,
        f"{name}_ours_s": ours_s,
        f"{name}_baseline_s": base_s,
        f"{name}_mismatches": bad,
        f"{name}_identical_requests": same,  # whole completions equal, over all repeats
    }


def offline_scenario(eng: Engines, sizes: Sizes) -> dict[str, Any]:
    """(a) every prompt asks for `sizes.new_tokens`."""
    lengths = random_lengths(sizes.prompts, sizes.prompt_len, 1)
    return throughput_scenario(eng, "offline", lengths, [sizes.new_tokens] * len(lengths), sizes, 100)


def mixed_scenario(eng: Engines, sizes: Sizes) -> dict[str, Any]:
    """(c) max_tokens uniform in `sizes.mixed_max_tokens`; only requested tokens count."""
    lengths = random_lengths(sizes.prompts, sizes.prompt_len, 2)
    max_tokens = random_lengths(sizes.prompts, sizes.mixed_max_tokens, 3)
    return throughput_scenario(eng, "mixed", lengths, max_tokens, sizes, 200)


def batch1_scenario(eng: Engines, sizes: Sizes) -> dict[str, Any]:
    """(b) TTFT = time for 1 token; decode latency = (time for 1 + N tokens - TTFT) / N; best of 3."""
    n, length = sizes.decode_tokens, [sizes.ttft_prompt]
    runs = {"ours": run_ours, "baseline": partial(run_baseline, batch_size=1)}
    warm_up(eng)
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "baseline": []}
    tokens: dict[str, list[list[int]]] = {}
    bad = 0
    for r in range(max(3, sizes.repeats)):
        first_prompt, prompt = (random_prompts(length, 300 + 2 * r + i, eng.config) for i in (0, 1))
        for side, run in runs.items():
            first, _ = timed(eng, run, first_prompt, [1])
            total, tokens[side] = timed(eng, run, prompt, [1 + n])
            times[side].append((first, total))
        bad += check_same("batch1", tokens["ours"], tokens["baseline"], sizes.check_tokens)
    out: dict[str, Any] = {}
    for side, pairs in times.items():
        out[f"ttft_{side}_ms"] = 1e3 * min(p[0] for p in pairs)
        out[f"decode_{side}_ms"] = 1e3 * (min(p[1] for p in pairs) - min(p[0] for p in pairs)) / n
    out["ttft_ratio"] = out["ttft_baseline_ms"] / out["ttft_ours_ms"]
    out["decode_latency_ratio"] = out["decode_baseline_ms"] / out["decode_ours_ms"]
    out["batch1_mismatches"] = bad
    return out


# ---------------------------------------------------------------- memory-bandwidth floor


def active_decode_bytes(config: dict[str, Any], dtype: torch.dtype, quantization: str | None = None) -> int:
    """Weight bytes one batch-1 decode step must read (embedding row, attention, norms, dense MLP or
    router + top-k experts + shared expert, final norm, lm_head). Router and expert bias are fp32;
    with int8 weights every element counts one byte (their per-row scales are under 1%)."""
    d, v, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    hd, h, hkv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    mlp = 3 * d  # SwiGLU weights per unit of width
    attn = (h + 2 * hkv) * hd * d + d * h * hd + 2 * hd + 2 * d  # qkv, dense, q/k norms, 2 layer norms
    dense = config["first_k_dense_replace"]
    shared = config.get("moe_shared_expert_intermediate_size") or config["moe_intermediate_size"]
    moe = config["num_experts_per_tok"] * mlp * config["moe_intermediate_size"]
    moe += mlp * shared * config.get("num_shared_experts", 0)
    router = config["num_experts"] * (d + 1)  # fp32 whatever the compute dtype
    elems = d + layers * attn + dense * mlp * config["intermediate_size"] + (layers - dense) * moe
    elems += d + v * d  # final norm, lm_head
    size = 1 if quantization == "int8" else torch.empty((), dtype=dtype).element_size()
    return elems * size + (layers - dense) * router * 4


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, tries: int = 5) -> float:
    """Best (bytes read + bytes written) / s of `dst.copy_(src)` on a float32 tensor of `nbytes`."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(tries):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def floor_scenario(eng: Engines, batch1: dict[str, Any]) -> dict[str, Any]:
    nbytes = active_decode_bytes(eng.config, eng.ours.dtype, eng.ours.engine.config.quantization)
    bandwidth = copy_bandwidth(eng.device)
    floor_ms = 1e3 * nbytes / bandwidth
    return {
        "active_decode_bytes": nbytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "decode_floor_ms": floor_ms,
        "ours_decode_over_floor": batch1["decode_ours_ms"] / floor_ms,
        "baseline_decode_over_floor": batch1["decode_baseline_ms"] / floor_ms,
    }


@torch.inference_mode()
def deviation_scenario(eng: Engines, prompts: int = 3, length: int = 128) -> dict[str, Any]:
    """Our full-sequence logits against the baseline's on the same prompts: the largest and the mean
    |difference| in units of the baseline's logit std, and how often the argmax agrees."""
    worst, mean, agree = 0.0, 0.0, 0.0
    for ids in random_prompts([length] * prompts, 555, eng.config):
        ours = eng.ours.logits(ids).float().cpu()
        ref = eng.baseline(torch.tensor([ids], device=eng.device)).logits[0].float().cpu()
        diff = (ours - ref).abs() / ref.std()
        worst, mean = max(worst, diff.max().item()), mean + diff.mean().item() / prompts
        agree += (ours.argmax(-1) == ref.argmax(-1)).float().mean().item() / prompts
    return {"logit_max_dev_std": worst, "logit_mean_dev_std": mean, "logit_top1_agreement": agree}


# ---------------------------------------------------------------- report


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}
    info["threads"] = torch.get_num_threads()
    info["cpu_bf16_arithmetic"] = cpu_has_bf16_arithmetic()
    info["loadavg_1min_at_end"] = os.getloadavg()[0]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def report(name: str, quick: bool, result: dict[str, Any], table: str, as_json: bool) -> Path:
    """Write bench/results/<name>[-quick].json; print the markdown table (and, with `as_json`, the
    table on stderr and the result as one JSON object on stdout)."""
    out = REPO / "bench" / "results" / f"{name}{'-quick' if quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(table, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table)
    log(f"wrote {out.relative_to(REPO)}")
    return out


def _git_state() -> str:
    """HEAD's short hash, with "+dirty" when the work tree has changes (the engine may be mid-edit)."""
    try:
        git = partial(subprocess.run, cwd=REPO, capture_output=True, text=True, check=True)
        head = git(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
        return head + ("+dirty" if git(["git", "status", "--porcelain"]).stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_all(eng: Engines, sizes: Sizes) -> dict[str, Any]:
    """Every scenario on loaded engines; one flat dict of results."""
    results: dict[str, Any] = {
        "ours_dtype": str(eng.ours.engine.dtype).removeprefix("torch."),
        "ours_decode_graph": eng.ours.engine.runner.decode_graph is not None,
        "ours_quantization": eng.ours.engine.config.quantization,
    }
    for name, scenario in (("offline", offline_scenario), ("batch 1", batch1_scenario)):
        log(f"scenario: {name}")
        results.update(scenario(eng, sizes))
    results.update(floor_scenario(eng, results))
    results.update(deviation_scenario(eng))
    log("scenario: mixed")
    results.update(mixed_scenario(eng, sizes))
    results["sizes"] = dataclasses.asdict(sizes)
    return results


def markdown_table(r: dict[str, Any], machine: dict[str, Any]) -> str:
    s = r["sizes"]
    n, (lo, hi) = s["prompts"], s["mixed_max_tokens"]
    rows = [  # (scenario, metric, key of ours, key of the baseline, key of the ratio)
        (
            f"offline, {n} prompts x {s['new_tokens']} new",
            "generated tok/s",
            "offline_",
            "_tok_s",
            "offline_throughput",
        ),
        (f"batch 1, TTFT at {s['ttft_prompt']} prompt tokens", "ms", "ttft_", "_ms", "ttft"),
        (f"batch 1, decode {s['decode_tokens']} tokens", "ms / token", "decode_", "_ms", "decode_latency"),
        (f"mixed, {n} prompts x {lo}-{hi} new", "useful tok/s", "mixed_", "_tok_s", "mixed_throughput"),
    ]
    lines = ["| scenario | metric | ours | baseline | ratio (higher is better) |", "|---|---|---|---|---|"]
    for scenario, metric, pre, post, ratio in rows:
        ours, base, x = r[f"{pre}ours{post}"], r[f"{pre}baseline{post}"], r[f"{ratio}_ratio"]
        lines.append(f"| {scenario} | {metric} | {ours:.2f} | {base:.2f} | {x:.2f}x |")
    lines.append(
        f"| batch-1 decode / bandwidth floor ({r['decode_floor_ms']:.2f} ms) | x floor "
        f"| {r['ours_decode_over_floor']:.2f}x | {r['baseline_decode_over_floor']:.2f}x | |"
    )
    lines.append(
        f"| logits vs the baseline's ({r['logit_top1_agreement']:.1%} same argmax) | max / mean "
        f"abs diff, in logit std | {r['logit_max_dev_std']:.2e} / {r['logit_mean_dev_std']:.2e} | | |"
    )
    gpu = f", {machine['gpu']}" if "gpu" in machine else ""
    bf16 = "with" if machine.get("cpu_bf16_arithmetic") else "without"
    head = (
        f"Machine: {machine['cpu']} ({bf16} bf16 arithmetic), {machine['cores']} cores, torch "
        f"{machine['torch']}, {machine['threads']} threads{gpu}. Ours: {r['ours_dtype']}"
        f"{' with int8 weights' if r.get('ours_quantization') == 'int8' else ''}, decode graph "
        f"{'on' if r['ours_decode_graph'] else 'off'}. Baseline batch sizes: offline "
        f"{r['offline_baseline_batch_size']}, mixed {r['mixed_baseline_batch_size']}."
    )
    return head + "\n\n" + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 prompts, 32 new tokens (< 3 min on 2 cores)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout, the rest on stderr")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--real-config", choices=sorted(REAL_SPECS), help="real model shapes (GPU only)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, help="timed runs per engine and scenario (default 2)")
    ap.add_argument(
        "--ours-dtype",
        choices=["float32", "bfloat16", "auto"],
        help="our engine's dtype (default float32 on CPU; auto: the engine's choice for this CPU)",
    )
    ap.add_argument("--quantization", choices=["int8"], help="our weights quantized (engine.int8)")
    ap.add_argument(
        "--decode-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="our compiled decode graph (engine.decode_graph; default: the engine's default, on)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if os.getloadavg()[0] > 0.5:
        log(f"note: load average {os.getloadavg()[0]:.2f} before start; other jobs will skew the times")
    device, sizes, t0 = torch.device(args.device), QUICK if args.quick else FULL, time.perf_counter()
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    if args.real_config and device.type != "cuda":
        ap.error("--real-config needs --device cuda (the model is tens of GB)")
    if args.real_config:
        folder = ensure_real_checkpoint(BENCH_ROOT / args.real_config, args.real_config, device)
    else:
        folder = ensure_bench_checkpoint(BENCH_ROOT / "ling-bench")
    quantized = {"quantization": args.quantization} if args.quantization else None
    eng = load_engines(folder, device, args.ours_dtype, args.decode_graph, quantized)
    results = run_all(eng, sizes)
    machine = machine_info(device)
    results.update(
        checkpoint=str(folder.relative_to(REPO)),
        config=eng.config,
        machine=machine,
        load_s=eng.load_s,
        git=_git_state(),
        total_s=time.perf_counter() - t0,
    )
    print(markdown_table(results, machine), file=sys.stderr if args.json else sys.stdout)
    variant = "" if results["ours_dtype"] == "float32" else "-" + results["ours_dtype"]
    variant += "-int8" if args.quantization else ""
    variant += "" if results["ours_decode_graph"] or device.type == "cuda" else "-eager"
    name = f"engine-{device.type}{'-' + args.real_config if args.real_config else ''}{variant}"
    name += "-quick" * args.quick
    out = REPO / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
