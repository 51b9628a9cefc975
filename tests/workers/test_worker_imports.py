"""A worker holds only the libraries its model needs: a text worker (a demo Ling, its engine loaded the
way `bailing worker` loads it) imports no image or speech stack (diffusers, torchaudio, av, the Ming
heads) and no grammar machinery before its first grammar (llguidance.torch, which torch.compiles a
kernel on import; llguidance.hf, which loads transformers' tokenizer classes). Each is ~50-170 MiB of
a worker's own memory (bench/demo_rss.py). That the grammar pieces load when a grammar comes is
tests/engine/test_structured_engine.py's: it decodes with grammars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bailing.demo.writer import write_demo_models

REPO = Path(__file__).resolve().parents[2]
NOT_IN_A_TEXT_WORKER = (
    "diffusers",
    "torchaudio",
    "av",
    "models.ming.generation",
    "models.ming.speech",
    "models.ming.processing",
    "llguidance.torch",
    "llguidance.hf",
)


def test_a_text_worker_imports_no_media_or_grammar_stack(tmp_path, redis_url):
    folder = write_demo_models(tmp_path, ("ling",))["ling"]
    config = f"WorkerConfig(redis_url={redis_url!r}, family='ling', model_dir=Path({str(folder)!r}))"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import workers.app\n"
        "from workers.config import WorkerConfig\n"
        "from workers.process_runtime import get_runtime\n"
        f"get_runtime({config})\n"
        f"print(' '.join(m for m in {NOT_IN_A_TEXT_WORKER!r} if m in sys.modules))\n"
        "import os; os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"a text worker imported {out.stdout.strip()}"
