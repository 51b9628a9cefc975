"""The client's errors: every failure a caller sees is a `BailingClientError` with a gRPC status name.

A request the client refuses to send (bad arguments, found before any network call) is a
`BailingArgumentError`: code INVALID_ARGUMENT, and a `ValueError` too. Conversion of a failed RPC
into these lives in `bailing.client_convert.error_from_rpc`.
"""

from __future__ import annotations


class BailingClientError(Exception):
    """A failed call: `code` is the gRPC status name (e.g. "UNAVAILABLE"), `details` the server's text."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


class BailingConnectionError(BailingClientError):
    """The gateway could not be reached at all (nothing listening, DNS, timeout while connecting)."""


class BailingArgumentError(BailingClientError, ValueError):
    """A request the client refuses to send (code INVALID_ARGUMENT), raised before any network call."""


def invalid_argument(where: str, message: str) -> BailingArgumentError:
    """The error of a request the client refuses to send (`where` names the argument)."""
    return BailingArgumentError("INVALID_ARGUMENT", f"{where}: {message}")
