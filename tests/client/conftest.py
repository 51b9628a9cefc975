"""A whole local stack (embedded Valkey, gateway, demo Ling worker) for the client and CLI tests.

Started once per test session on a free port through the same `Stack` that `bailing up` uses.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from bailing.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(port=0, http_port=0, dir=tmp_path_factory.mktemp("stack"), ready_timeout_s=300) as running:
        yield running


@pytest.fixture()
def dead_address() -> str:
    """host:port where nothing listens (a port that was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
