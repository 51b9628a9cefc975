"""Subcommands of `bailing` beyond init-demo/generate, one module each.

Each module exposes `add_parsers(sub)` and keeps heavy imports (torch, grpc, celery) inside its
command functions so `bailing --help` stays fast. Command functions return a process exit code.
"""

MODULES = (
    "bailing.commands.gateway",  # bailing gateway
    "bailing.commands.worker",  # bailing worker
    "bailing.commands.stack",  # bailing up
    "bailing.commands.client",  # bailing chat / transcribe
    "bailing.commands.health",  # bailing models / healthcheck
    "bailing.commands.image",  # bailing image
    "bailing.commands.speech",  # bailing speak (chat --speak lives there too)
    "bailing.commands.batch",  # bailing batch submit / status / list / cancel / results
)
