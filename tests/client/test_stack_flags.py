"""`bailing up`'s flags reach its children: `--kv-cache-bytes` is passed to every worker, and without it
no worker gets one (each sizes its KV pool from its model: engine.kv_cache.KVCacheSpec)."""

from __future__ import annotations

from pathlib import Path

from bailing.cli import build_parser
from bailing.stack import Stack


def worker_argvs(stack: Stack) -> list[list[str]]:
    stack.models = {"ling": Path("/ckpt/ling"), "ming": Path("/ckpt/ming")}
    stack.families = {"ling": "ling", "ming": "ming"}
    stack.redis_url = "redis://127.0.0.1:6379/0"
    return [child.argv for child in stack._worker_children()]


def test_kv_cache_bytes_reaches_every_worker():
    argvs = worker_argvs(Stack(port=0, kv_cache_bytes=64 << 20))
    assert len(argvs) == 2
    for argv in argvs:
        assert argv[argv.index("--kv-cache-bytes") + 1] == str(64 << 20)
    assert all("--kv-cache-bytes" not in argv for argv in worker_argvs(Stack(port=0)))


def test_up_parses_the_flag():
    args = build_parser().parse_args(["up", "--kv-cache-bytes", "1048576"])
    assert args.kv_cache_bytes == 1 << 20
    assert build_parser().parse_args(["up"]).kv_cache_bytes is None
