"""OpenAI's error object and the HTTP status for each gRPC status the gateway answers with.

Every failure of an HTTP call ends here: `{"error": {"message", "type", "param", "code"}}` with the
matching status (the `openai` client raises its BadRequestError, AuthenticationError, NotFoundError,
RateLimitError, ... by that status). Messages are the gateway's own one-line ones, never a traceback.
"""

from __future__ import annotations

import grpc
from starlette.responses import JSONResponse

from gateway.errors import clip

# gRPC status -> (HTTP status, OpenAI error type)
_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
_SERVER_ERROR = (500, "server_error")


class HttpError(Exception):
    """Ends an HTTP call with `status` and OpenAI's error object (raised by the request readers)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, clip(message), param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None) -> HttpError:
    return HttpError(400, message, param=param)


def from_status(code: grpc.StatusCode, message: str) -> HttpError:
    """The HTTP error for a gRPC status the servicer ended the call with."""
    status, kind = _STATUS.get(code, _SERVER_ERROR)
    return HttpError(status, message, kind=kind)
