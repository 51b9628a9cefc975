"""What every benchmark script shares: where the repository is, logging, the machine it ran on, the
git state it ran at, and writing results (bench/results/*.json + a markdown table)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

from engine.model_loader import cpu_has_bf16_arithmetic

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def git_state() -> str:
    """HEAD's short hash, with "+dirty" when the work tree has changes (the engine may be mid-edit)."""
    try:
        git = partial(subprocess.run, cwd=REPO, capture_output=True, text=True, check=True)
        head = git(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
        return head + ("+dirty" if git(["git", "status", "--porcelain"]).stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
