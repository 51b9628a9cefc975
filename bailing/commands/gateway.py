"""`bailing gateway`: run the gRPC front door (flags + BAILING_* environment -> GatewayConfig -> serve).

Prints "gateway listening on HOST:PORT" once it accepts calls; SIGTERM/SIGINT drain it and exit 0.
"""

from __future__ import annotations

import argparse

from bailing.settings import DEFAULT_GRPC_PORT, read_environment


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="run the gRPC gateway in front of the workers")
    p.add_argument(
        "--models",
        required=True,
        metavar="NAMES",
        help="served model names, comma-separated (ling,ring,llada2,ming)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_GRPC_PORT, help="0 = a free port (default %(default)s)"
    )
    p.add_argument("--redis-url", default=None, help="Redis URL (default: BAILING_REDIS_URL)")
    p.add_argument("--max-inflight", type=int, default=256, help="concurrent requests at most (default 256)")
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port; 0 = off (default)")
    p.add_argument(
        "--drain-grace",
        type=float,
        default=30.0,
        help="seconds in-flight requests get on shutdown (default 30)",
    )
    p.add_argument(
        "--max-media-bytes",
        type=int,
        default=20 * 1024 * 1024,
        help="bytes per image / audio / video part at most (default 20 MiB); more is INVALID_ARGUMENT",
    )
    images = p.add_argument_group(
        "image generation (GenerateImage)", "larger requests are INVALID_ARGUMENT; unset: the default"
    )
    for flag, metavar, help in _IMAGE_LIMIT_FLAGS:
        images.add_argument(flag, type=int, default=None, metavar=metavar, help=help)
    speech = p.add_argument_group(
        "speech synthesis (SynthesizeSpeech, spoken replies)", "larger requests are INVALID_ARGUMENT"
    )
    for flag, metavar, help in _SPEECH_LIMIT_FLAGS:
        speech.add_argument(flag, type=int, default=None, metavar=metavar, help=help)
    p.set_defaults(func=_cmd_gateway)


# flag -> GatewayConfig field (dashes -> underscores), all optional ints
_IMAGE_LIMIT_FLAGS = (
    ("--max-image-side", "PX", "width / height in pixels at most (default 4096)"),
    ("--max-image-pixels", "PX", "width * height at most (default 4194304 = 2048 * 2048)"),
    ("--max-image-steps", "N", "denoising steps at most (default 200)"),
    ("--max-images-per-request", "N", "num_images at most (default 4)"),
    ("--max-image-prompt-chars", "N", "prompt / negative_prompt characters at most (default 4000)"),
)
_SPEECH_LIMIT_FLAGS = (
    ("--max-speech-text-chars", "N", "text / speaker_text / instruction characters at most (default 2000)"),
    ("--max-speaker-audio-bytes", "B", "the speaker clip to clone, bytes at most (default 16 MiB)"),
)


def _limits(args: argparse.Namespace) -> dict[str, int]:
    """The image and speech limit flags that were given, as GatewayConfig fields."""
    flags = (*_IMAGE_LIMIT_FLAGS, *_SPEECH_LIMIT_FLAGS)
    names = (flag[2:].replace("-", "_") for flag, _, _ in flags)
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _config(args: argparse.Namespace):
    from gateway.config import GatewayConfig

    env = read_environment()
    redis_url = args.redis_url or env.redis_url
    if not redis_url:
        raise ValueError("no Redis: pass --redis-url or set BAILING_REDIS_URL")
    return GatewayConfig(
        redis_url=redis_url,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        host=args.host,
        port=args.port,
        api_token=env.api_token,
        max_inflight=args.max_inflight,
        metrics_port=args.metrics_port,
        drain_grace_s=args.drain_grace,
        max_media_bytes=args.max_media_bytes,
        **_limits(args),
    )


def _cmd_gateway(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gateway.server import serve

    cfg = _config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(cfg, announce=lambda line: print(line, flush=True)))
