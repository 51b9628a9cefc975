"""`bailing models` and `bailing healthcheck`: what a running gateway serves, and whether it (or a worker
on this host, by its heartbeat in Redis: for containers) is alive. Exit codes as in commands/client.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from bailing.commands.client import (
    EXIT_CONNECT,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    EXIT_USAGE,
    _add_connection_args,
    _run,
)
from pipelines.clock import CLOCK, server_now


def _cmd_models(client: Any, args: argparse.Namespace) -> int:
    models = client.list_models()
    if args.json:
        print(json.dumps([asdict(m) for m in models]))
        return EXIT_OK
    rows = [("NAME", "FAMILY", "LIVE WORKERS", "MAX MODEL LEN", "MODALITIES", "OUTPUTS")]
    rows += [
        (
            m.name,
            m.family,
            str(m.live_workers),
            str(m.max_model_len),
            ",".join(m.modalities),
            ",".join(m.outputs),
        )
        for m in models
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _cmd_healthcheck(client: Any, args: argparse.Namespace) -> int:
    from bailing.client import BailingClientError

    try:
        status = client.health(args.service)
    except BailingClientError as exc:
        if exc.code != "NOT_FOUND":
            raise
        status = f"SERVICE_UNKNOWN (the gateway has no health status for {args.service!r})"
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_SERVER_ERROR


def _worker_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 if a worker serving model `args.worker` on this host heartbeats in Redis (for containers)."""
    import socket

    import redis

    from bailing.settings import read_environment
    from pipelines.protocol import (
        WORKER_DEAD_AFTER_S,
        WorkerInfo,
        stage_workers_key,
        worker_info_key,
        workers_key,
    )

    url = args.redis_url or read_environment().redis_url
    if not url:
        print("error: --worker needs --redis-url or BAILING_REDIS_URL", file=sys.stderr)
        return EXIT_USAGE
    host = socket.gethostname()
    try:
        db = redis.Redis.from_url(url, socket_timeout=args.timeout, socket_connect_timeout=args.timeout)
        registry = stage_workers_key(args.worker) if args.image_stage else workers_key(args.worker)
        CLOCK.sync(db)
        live = db.zrangebyscore(registry, server_now() - WORKER_DEAD_AFTER_S, "+inf")
        infos = [db.get(worker_info_key(member.decode())) for member in live]
    except redis.RedisError as exc:
        print(f"error: cannot reach Redis at {url}: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    mine = [info for info in (WorkerInfo.from_json(raw) for raw in infos if raw) if info.host == host]
    role = "image-stage worker(s)" if args.image_stage else "worker(s)"
    print(f"{len(mine)} live {role} of {args.worker} on {host}")
    return EXIT_OK if mine else EXIT_SERVER_ERROR


def _healthcheck(args: argparse.Namespace) -> int:
    return _worker_healthcheck(args) if args.worker else _run(_cmd_healthcheck, args)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list the models a running gateway serves")
    models.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    _add_connection_args(models, 30.0, "connect and call deadline in seconds (default 30)")
    models.set_defaults(func=lambda args: _run(_cmd_models, args))

    health = sub.add_parser(
        "healthcheck", help="exit 0 if the gateway is SERVING, 1 if not, 3 if it cannot be reached"
    )
    health.add_argument("--service", default="", help='health service name (default "": the whole gateway)')
    _add_connection_args(health, 10.0, "connect and call deadline in seconds (default 10)")
    health.add_argument(
        "--worker", metavar="MODEL",
        help="check instead that a worker serving MODEL on this host heartbeats in Redis",
    )  # fmt: skip
    health.add_argument("--redis-url", help="with --worker (default: $BAILING_REDIS_URL)")
    health.add_argument(
        "--image-stage", action="store_true", help="with --worker: a diffusion-stage worker of MODEL instead"
    )
    health.set_defaults(func=_healthcheck)
