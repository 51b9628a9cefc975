"""HttpCallContext: the part of grpc.aio's ServicerContext the gateway's servicers use, for an HTTP call.

`abort` raises `CallAborted` (what gRPC's abort does with its own exception) for the route to turn into
an OpenAI error; `done()` and the done callbacks follow the HTTP exchange: `end()` runs them when the
response is complete or the client disconnected, which is how a disconnect cancels the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)


class CallAborted(Exception):
    """The servicer ended the call with `code` and `message` (gRPC's abort)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class HttpCallContext:
    def __init__(self, authorization: str | None, timeout_s: float | None = None) -> None:
        self._metadata = (("authorization", authorization),) if authorization else ()
        self._timeout_s = timeout_s
        self._callbacks: list[Callable[[Any], None]] = []
        self._done = False

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise CallAborted(code, details)

    def time_remaining(self) -> float | None:
        return self._timeout_s

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def done(self) -> bool:
        return self._done

    def end(self) -> None:
        """The HTTP exchange is over (answered, or the client went away): run the done callbacks once."""
        if self._done:
            return
        self._done = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # one callback's failure must not skip the others (they send cancels)
                log.exception("an HTTP call's done callback failed")
