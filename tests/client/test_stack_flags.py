"""`bailing up`'s flags reach its children: `--kv-cache-bytes` is passed to every worker, and without it
no worker gets one (each sizes its KV pool from its model: engine.kv_cache.KVCacheSpec); the demo
workers compile no decode graph unless `--compile-decode` asks for it."""

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


def test_demo_workers_compile_only_when_asked():
    assert all("--no-compile-decode" in argv for argv in worker_argvs(Stack(port=0)))
    asked = worker_argvs(Stack(port=0, compile_decode=True))
    assert all("--compile-decode" in argv and "--no-compile-decode" not in argv for argv in asked)


def test_up_parses_the_flags():
    args = build_parser().parse_args(["up", "--kv-cache-bytes", "1048576", "--compile-decode"])
    assert args.kv_cache_bytes == 1 << 20 and args.compile_decode is True
    default = build_parser().parse_args(["up"])
    assert default.kv_cache_bytes is None and default.compile_decode is False
