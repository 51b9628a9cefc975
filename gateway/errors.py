"""`Rejection`: a failure the client caused or must see, carried to the servicer as a gRPC status."""

from __future__ import annotations

import grpc


class Rejection(Exception):
    """Ends an RPC with `code` and a one-line `message` (never a traceback)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"Rejection({self.code.name}, {self.message!r})"


def invalid(message: str) -> Rejection:
    return Rejection(grpc.StatusCode.INVALID_ARGUMENT, message)


def status_from_name(name: str) -> grpc.StatusCode:
    """The StatusCode called `name` (e.g. an Event's error_code); INTERNAL for unknown names."""
    try:
        code = grpc.StatusCode[name]
    except KeyError:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.INTERNAL if code is grpc.StatusCode.OK else code
