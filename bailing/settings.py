"""Settings read from the environment, in one place (only entry points call these).

Everything below `bailing` receives plain config objects; nothing else reads os.environ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_GRPC_PORT = 50051


@dataclass(frozen=True)
class Environment:
    redis_url: str | None  # BAILING_REDIS_URL: an external Redis; None = `bailing up` embeds Valkey
    api_token: str | None  # BAILING_API_TOKEN: clients must send "authorization: Bearer <token>"
    gateway_address: str  # BAILING_GATEWAY: where clients connect (host:port)
    # clients' TLS (PEM file paths; any set = TLS): BAILING_TLS_CA verifies the gateway (unset: the
    # system's roots); BAILING_TLS_CERT + BAILING_TLS_KEY are the client certificate for mutual TLS
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


def read_environment() -> Environment:
    return Environment(
        redis_url=os.environ.get("BAILING_REDIS_URL") or None,
        api_token=os.environ.get("BAILING_API_TOKEN") or None,
        gateway_address=os.environ.get("BAILING_GATEWAY") or f"127.0.0.1:{DEFAULT_GRPC_PORT}",
        tls_ca=os.environ.get("BAILING_TLS_CA") or None,
        tls_cert=os.environ.get("BAILING_TLS_CERT") or None,
        tls_key=os.environ.get("BAILING_TLS_KEY") or None,
    )
