"""TLS credentials from PEM files: the gateway's server credentials (TLS, or mutual TLS with a client CA)
and the clients' channel credentials. Paths come in; grpc credentials go out; a missing, unreadable or
non-PEM file is a ValueError naming the option it came from.
"""

from __future__ import annotations

import os

import grpc

PEM_MARKER = b"-----BEGIN "
# how the client's options are named in errors: the argument, its CLI flag and its environment variable
_CLIENT = {part: f"tls_{part} (--tls-{part}, BAILING_TLS_{part.upper()})" for part in ("ca", "cert", "key")}


def read_pem(path: str | os.PathLike, option: str) -> bytes:
    """The bytes of the PEM file at `path`; ValueError naming `option` if it cannot be read or is no PEM."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{option}: cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    if PEM_MARKER not in data:
        raise ValueError(f"{option}: {os.fspath(path)} is not a PEM file (no '-----BEGIN ...' line)")
    return data


def server_credentials(
    cert: str | os.PathLike, key: str | os.PathLike, client_ca: str | os.PathLike | None = None
) -> grpc.ServerCredentials:
    """TLS with the certificate chain `cert` and its private `key`; with `client_ca`, every client must
    present a certificate signed by that CA (mutual TLS), and one without is refused in the handshake."""
    pair = (read_pem(key, "tls_key (--tls-key)"), read_pem(cert, "tls_cert (--tls-cert)"))
    root = read_pem(client_ca, "tls_client_ca (--tls-client-ca)") if client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


def channel_credentials(
    ca: str | os.PathLike | None = None,
    cert: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
) -> grpc.ChannelCredentials | None:
    """Client TLS from PEM file paths, or None (plaintext) when none is given. `ca` verifies the
    gateway (None = the system's root certificates); `cert` + `key` (both or neither) are the client's
    certificate for a gateway that requires one."""
    if cert is None and key is None and ca is None:
        return None
    if (cert is None) != (key is None):
        given, missing = ("cert", "key") if key is None else ("key", "cert")
        raise ValueError(f"{_CLIENT[given]} needs {_CLIENT[missing]}: a client certificate goes with its key")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, _CLIENT["ca"]) if ca is not None else None,
        private_key=read_pem(key, _CLIENT["key"]) if key is not None else None,
        certificate_chain=read_pem(cert, _CLIENT["cert"]) if cert is not None else None,
    )
