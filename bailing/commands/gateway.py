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
    p.add_argument(
        "--http-port", type=int, default=None, metavar="P",
        help="also serve the OpenAI-compatible HTTP API (/v1/...) on port P; 0 = a free port (default: off)",
    )  # fmt: skip
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
    _add_security_args(p)
    p.set_defaults(func=_cmd_gateway)


def _add_security_args(p: argparse.ArgumentParser) -> None:
    tls = p.add_argument_group("TLS", "PEM files; with --tls-cert and --tls-key the port speaks TLS only")
    tls.add_argument("--tls-cert", metavar="PEM", help="the server's certificate (chain)")
    tls.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    tls.add_argument(
        "--tls-client-ca", metavar="PEM",
        help="mutual TLS: clients must present a certificate signed by this CA",
    )  # fmt: skip
    auth = p.add_argument_group(
        "bearer tokens", "with any token (BAILING_API_TOKEN and/or a file), every call must send one"
    )
    auth.add_argument(
        "--api-token-file", metavar="PATH",
        help="accepted tokens, one per line (blank lines and # comments skipped)",
    )  # fmt: skip
    auth.add_argument(
        "--max-streams-per-token", type=int, default=0, metavar="N",
        help="concurrent generation calls per token; more get RESOURCE_EXHAUSTED (default 0 = no limit)",
    )  # fmt: skip


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


def _token_file(path: str | None) -> tuple[str, ...]:
    """The tokens of --api-token-file (none without the flag); an unreadable or empty file is an error."""
    from gateway.tokens import parse_token_file

    if path is None:
        return ()
    try:
        with open(path, encoding="utf-8") as f:
            tokens = parse_token_file(f.read())
    except OSError as exc:
        raise ValueError(f"--api-token-file: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # the message would quote the file's bytes
        raise ValueError(f"--api-token-file: {path} is not UTF-8 text") from None
    if not tokens:
        raise ValueError(f"--api-token-file: {path} holds no token (only blank lines and # comments)")
    return tokens


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
        http_port=args.http_port,
        api_token=env.api_token,
        api_tokens=_token_file(args.api_token_file),
        max_streams_per_token=args.max_streams_per_token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_inflight=args.max_inflight,
        metrics_port=args.metrics_port,
        drain_grace_s=args.drain_grace,
        max_media_bytes=args.max_media_bytes,
        **_limits(args),
    )


def _cmd_gateway(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gateway.app import serve

    cfg = _config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(cfg, announce=lambda line: print(line, flush=True)))
