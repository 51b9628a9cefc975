"""OpenAI batch files <-> our batch jobs: an uploaded input file (JSONL, one request per line) -> the
CreateBatchRequest; a batch -> OpenAI's batch object; its results -> the lines of its output file
(completed requests) and error file (failed ones).

Input lines are OpenAI's `{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body"}`; each
body is read as its endpoint reads a call's body (gateway.http_api.requests), so a line gets the same
400 as the same call would, prefixed with its line number. Our batch runs one model: every line names
the same one. `completion_window` is OpenAI's "24h", or any "<n>h" / "<n>m" / "<n>s".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from gateway.api import pb
from gateway.errors import status_from_name
from gateway.http_api.errors import HttpError, bad_request, from_status
from gateway.http_api.file_store import BatchLink
from gateway.http_api.replies import chat_completion, completion
from gateway.http_api.requests import chat_request, completion_request

ENDPOINTS: dict[str, Callable[[dict[str, Any]], tuple[pb.GenerateRequest, bool, bool]]] = {
    "/v1/chat/completions": chat_request,
    "/v1/completions": completion_request,
}
WINDOW = re.compile(r"([1-9][0-9]{0,5})([hms])")
UNIT_S = {"h": 3600, "m": 60, "s": 1}
STATUS = {  # ours -> OpenAI's
    pb.VALIDATING: "validating",
    pb.QUEUED: "in_progress",
    pb.RUNNING: "in_progress",
    pb.EXPIRING: "in_progress",
    pb.COMPLETED: "completed",
    pb.FAILED: "failed",
    pb.CANCELLING: "cancelling",
    pb.CANCELLED: "cancelled",
    pb.EXPIRED: "expired",
}
FINISHED = {pb.COMPLETED, pb.FAILED, pb.CANCELLED, pb.EXPIRED}
ENDED_AT = {
    pb.COMPLETED: "completed_at",
    pb.FAILED: "failed_at",
    pb.CANCELLED: "cancelled_at",
    pb.EXPIRED: "expired_at",
}


def window_s(window: str) -> int:
    match = WINDOW.fullmatch(window)
    if match is None:
        raise bad_request(f'completion_window must be like "24h" (or "<n>m", "<n>s"), got {window!r:.40}')
    return int(match[1]) * UNIT_S[match[2]]


def check_endpoint(endpoint: str) -> None:
    if endpoint not in ENDPOINTS:
        raise bad_request(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r:.60}", "endpoint")


def batch_request(
    data: bytes, endpoint: str, window_seconds: int, metadata: dict[str, str]
) -> pb.CreateBatchRequest:
    """The CreateBatchRequest of an input file's bytes (400 naming the first bad line); `endpoint` is
    one of ENDPOINTS (`check_endpoint`), `window_seconds` the completion window (`window_s`)."""
    read = ENDPOINTS[endpoint]
    out = pb.CreateBatchRequest(completion_window_s=window_seconds, metadata=metadata)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise bad_request("the input file is not UTF-8 text (JSONL: one request per line)") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            custom_id, req = _line(line, endpoint, read)
        except HttpError as exc:
            raise bad_request(f"input file line {number}: {exc.message}", exc.param) from None
        if out.model and req.model != out.model:
            raise bad_request(
                f"input file line {number}: model {req.model!r:.60} differs from line 1's {out.model!r:.60}"
                " (a batch runs one model)"
            )
        out.model = req.model
        out.items.append(pb.BatchItem(custom_id=custom_id, request=req))
    if not out.items:
        raise bad_request("the input file holds no requests (JSONL: one request per line)")
    return out


def _line(line: str, endpoint: str, read: Callable[..., Any]) -> tuple[str, pb.GenerateRequest]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise bad_request(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise bad_request("must be a JSON object with custom_id, method, url and body")
    custom_id, method, url, body = (obj.get(k) for k in ("custom_id", "method", "url", "body"))
    if not isinstance(custom_id, str) or not custom_id:
        raise bad_request("custom_id must be a non-empty string")
    if method != "POST":
        raise bad_request(f'method must be "POST", got {method!r:.20}')
    if url != endpoint:
        raise bad_request(f"url must be the batch's endpoint {endpoint}, got {url!r:.60}")
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object (the request)")
    req, stream, _ = read(body)
    if stream:
        raise bad_request("stream must be false in a batch")
    return custom_id, req


def output_file_id(batch_id: str, errors: bool = False) -> str:
    return f"file-{batch_id}-{'errors' if errors else 'output'}"


def batch_of_file(file_id: str) -> tuple[str, bool] | None:
    """(batch id, is the error file?) of an output / error file's id, or None for other ids."""
    for suffix, errors in (("-output", False), ("-errors", True)):
        if file_id.startswith("file-batch_") and file_id.endswith(suffix):
            return file_id[len("file-") : -len(suffix)], errors
    return None


def batch_object(batch: pb.Batch, link: BatchLink | None) -> dict[str, Any]:
    """OpenAI's batch object of `batch` (`link` None: a batch created over gRPC)."""
    finished, counts, u = batch.status in FINISHED, batch.counts, batch.usage
    out: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "endpoint": link.endpoint if link else None,
        "model": batch.model,
        "errors": None,
        "input_file_id": link.input_file_id if link else None,
        "completion_window": link.completion_window if link else None,
        "status": STATUS.get(batch.status, "validating"),
        "output_file_id": output_file_id(batch.id) if finished and counts.completed else None,
        "error_file_id": output_file_id(batch.id, errors=True) if finished and counts.failed else None,
        "created_at": int(batch.created_at),
        "in_progress_at": int(batch.started_at) or None,
        "expires_at": int(batch.expires_at) or None,
        "finalizing_at": None,
        "request_counts": {"total": counts.total, "completed": counts.completed, "failed": counts.failed},
        "metadata": dict(batch.metadata) or None,
        "usage": {
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        },
    }
    for status, key in ENDED_AT.items():
        out[key] = int(batch.finished_at) if batch.status == status and batch.finished_at else None
    out["cancelling_at"] = None
    return out


def result_line(batch_id: str, result: pb.BatchResult, endpoint: str | None) -> bytes:
    """One line of the output file (a response) or of the error file (an error)."""
    line: dict[str, Any] = {"id": f"batch_req_{batch_id.removeprefix('batch_')}_{result.index}"}
    line["custom_id"] = result.custom_id
    if result.HasField("response"):
        reply = completion if endpoint == "/v1/completions" else chat_completion
        body = reply(result.response)
        line["response"] = {"status_code": 200, "request_id": result.response.request_id, "body": body}
        line["error"] = None
    else:
        err = from_status(status_from_name(result.error.code), result.error.message)
        line["response"] = {"status_code": err.status, "request_id": "", "body": err.body()}
        line["error"] = {"code": result.error.code.lower(), "message": result.error.message}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
