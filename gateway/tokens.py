"""Bearer tokens: the accepted set (kept as SHA-256 digests only), the caller's owner id, and the
per-token concurrent-call limit. Token files come in as text, metadata as (key, value) pairs; out go
owner ids (hex, never reversible to the token) that batches and counters are keyed by.

A presented token is hashed once and compared with `hmac.compare_digest` against EVERY accepted
digest (fixed 32-byte length, no early exit), so timing tells neither the token nor which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

import grpc

from gateway.errors import Rejection

OWNER_ID_BYTES = 16  # the owner id is the first 16 bytes of SHA-256(token), as hex


def parse_token_file(text: str) -> tuple[str, ...]:
    """One token per line; blank lines and `#` comments are skipped, surrounding spaces stripped."""
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def check_token(token: str, name: str) -> None:
    """ValueError naming `name` (never the token's text) for a token no client can send."""
    if not token:
        raise ValueError(f"{name} is empty")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError(f"{name} must be printable ASCII without spaces (it travels in gRPC metadata)")


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def owner_id(token: str | bytes) -> str:
    """The caller's id for ownership and counting: SHA-256(token), first 16 bytes, hex."""
    return _digest(token)[:OWNER_ID_BYTES].hex()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    """The token of the first `authorization: Bearer <token>` entry; None if there is none."""
    for key, value in metadata or ():
        if key == "authorization":
            raw = value.encode() if isinstance(value, str) else value
            scheme, _, token = raw.partition(b" ")
            return token if scheme.lower() == b"bearer" and token else None
    return None


class TokenSet:
    """The accepted tokens. Holds their digests only; repr() and str() show how many, nothing more."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(dict.fromkeys(_digest(t) for t in tokens))

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"TokenSet({len(self._digests)} token(s))"

    def accepts(self, token: str | bytes) -> bool:
        """Constant-time membership: every accepted digest is compared, whatever matches first."""
        presented, matched = _digest(token), False
        for expected in self._digests:
            matched |= hmac.compare_digest(presented, expected)
        return matched

    def problem(self, metadata) -> str | None:
        """Why the call's metadata is not authorized (a message without the token), or None."""
        token = bearer_token(metadata)
        if token is None:
            return "missing authorization metadata: send 'authorization: Bearer <token>'"
        return None if self.accepts(token) else "invalid bearer token"

    def owner(self, context) -> str | None:
        """The caller's owner id; None when no tokens are configured (nobody owns anything then)."""
        if not self._digests:
            return None
        token = bearer_token(context.invocation_metadata())
        if token is None or not self.accepts(token):  # the interceptor let it through: cannot happen
            raise Rejection(grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        return owner_id(token)


class StreamLimit:
    """Concurrent calls per owner id (0 = no limit); `check` before `add(+1)`, `add(-1)` when it ends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}  # owner id -> calls in progress (absent = none)

    def check(self, owner: str | None) -> None:
        if self.limit and owner is not None and self.open.get(owner, 0) >= self.limit:
            raise Rejection(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent calls with this token: the limit is {self.limit} "
                "(max_streams_per_token)",
            )

    def add(self, owner: str | None, delta: int) -> None:
        if not self.limit or owner is None:
            return
        count = self.open.get(owner, 0) + delta
        if count > 0:
            self.open[owner] = count
        else:
            self.open.pop(owner, None)
