"""The gateway stays torch-free: importing it in a fresh interpreter loads no torch/engine/models/workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gateway_imports_no_torch():
    code = (
        "import sys\n"
        "import gateway.app, gateway.server, gateway.convert, gateway.dispatch, bailing.commands.gateway\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "bad = sorted(top & {'torch', 'engine', 'models', 'workers'})\n"
        "print(' '.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the gateway imported {out.stdout.strip()}"
