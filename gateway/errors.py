"""`Rejection`: a failure the client caused or must see, carried to the servicer as a gRPC status."""

from __future__ import annotations

import grpc

# A status message travels percent-encoded (up to 3 bytes per UTF-8 byte) in the grpc-message trailer,
# and gRPC clients refuse trailers over their metadata limit (8 KiB soft, 16 KiB hard by default: the
# call then fails with RESOURCE_EXHAUSTED "received metadata size exceeds ..." instead of its status);
# 2000 bytes of UTF-8 stay under the soft limit.
MAX_MESSAGE_BYTES = 2000


def clip(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`message` as is, or, when its UTF-8 is over `limit` bytes (it quotes a huge value a client
    sent), its start and end with the middle cut out and counted."""
    data = message.encode()
    if len(data) <= limit:
        return message
    head, tail = limit * 3 // 4, limit // 5
    cut = f" [... {len(data) - head - tail} bytes cut ...] "
    return data[:head].decode(errors="ignore") + cut + data[-tail:].decode(errors="ignore")


class Rejection(Exception):
    """Ends an RPC with `code` and a one-line `message` (never a traceback; clipped to a size every
    client receives)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        message = clip(message)
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
