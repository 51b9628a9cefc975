"""Loading benchmark: time and peak RSS to load a ~1 GB sharded checkpoint, ours vs safetensors' mmap.

Writes the checkpoint once (zeros, fp32 and bf16 variants, 300 MB shards), then in fresh child
processes measures (a) our streaming loader (`engine.model_loader.load_model`) and (b) the common
baseline: `safetensors.torch.load_file` per shard (mmap) + `load_state_dict`-style copy into the same
materialised model. Prints a markdown table and writes bench/results/load-cpu.json.
Usage: python -m bench.load [--dir /tmp/bailing-bench-load]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from bailing.demo.writer import ling_tensor_layout, write_safetensors_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "architectures": ["BailingMoeV2ForCausalLM"],
    "model_type": "bailing_moe",
    "vocab_size": 32768,
    "hidden_size": 2048,
    "intermediate_size": 4096,
    "num_hidden_layers": 3,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "partial_rotary_factor": 0.5,
    "rope_theta": 600000.0,
    "max_position_embeddings": 4096,
    "num_experts": 16,
    "num_shared_experts": 1,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "moe_intermediate_size": 512,
    "first_k_dense_replace": 1,
    "routed_scaling_factor": 2.5,
    "use_qk_norm": True,
    "num_nextn_predict_layers": 0,
}

_CHILD = """
import json, sys, time, psutil, torch
from engine.model_loader import load_model, read_config, resolve_architecture
from engine.layers.base import materialize
from pathlib import Path
proc = psutil.Process(); base = proc.memory_info().rss; t0 = time.perf_counter()
folder = Path(sys.argv[1])
if sys.argv[2] == "ours":
    model = load_model(folder, torch.device("cpu"), torch.float32)
else:
    from safetensors.torch import load_file
    cfg = read_config(folder); model = resolve_architecture(cfg, folder).from_config_dict(cfg)
    materialize(model, torch.float32, "cpu"); targets = model.weight_targets()
    for shard in sorted(folder.glob("model-*.safetensors")):
        for k, v in load_file(shard).items():
            targets[k].dest.copy_(v)
elapsed = time.perf_counter() - t0; final = proc.memory_info().rss
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
peak = int(hwm.split()[1]) * 1024  # VmHWM: this exec only (ru_maxrss carries the parent's over exec)
nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"seconds": elapsed, "resident": final - base, "peak_over_base": peak - base,
                  "param_bytes": nbytes}))
"""


def write_checkpoints(root: Path) -> dict[str, Path]:
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        folder = root / name
        if not (folder / "model.safetensors.index.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps(CONFIG))
            state = {s.key: torch.zeros(s.shape) for s in ling_tensor_layout(CONFIG)}
            write_safetensors_checkpoint(folder, state, dtype=dtype, max_shard_bytes=300_000_000)
        out[name] = folder
    return out


def measure(folder: Path, mode: str) -> dict[str, float]:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/bailing-bench-load")
    args = ap.parse_args()
    rows = []
    for name, folder in write_checkpoints(Path(args.dir)).items():
        disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        for mode in ("ours", "mmap-baseline"):
            m = measure(folder, mode)
            rows.append(
                {
                    "checkpoint": name,
                    "disk_bytes": disk,
                    "loader": mode,
                    **m,
                    "peak_ratio": m["peak_over_base"] / m["param_bytes"],
                }
            )
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU"
    lines = [
        f"Machine: {machine}",
        "",
        "| checkpoint on disk | loader | load time (s) | resident (GB) | "
        "peak over base (GB) | peak / model bytes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['checkpoint']} {r['disk_bytes'] / 1e9:.2f} GB | {r['loader']} | {r['seconds']:.2f} | "
            f"{r['resident'] / 1e9:.2f} | {r['peak_over_base'] / 1e9:.2f} | {r['peak_ratio']:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    out = REPO / "bench" / "results" / "load-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
