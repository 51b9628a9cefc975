"""The protobuf boundary of batch jobs: CreateBatchRequest -> validated `BatchItemSpec`s, and
`BatchRecord` / `ItemResult` (pipelines.batches) -> pb.Batch / pb.BatchResult.

Items come inline (`items[i]`, 0-based) or as JSONL (`line n`, 1-based); each one goes through
`convert.request_to_job` (image items: `request.image_request` / a line with "method":
"GenerateImage", through `image.image_request_to_job`; speech items: `speech_request` / "method":
"SynthesizeSpeech", through `speech.speech_request_to_job`), so batch items get exactly the interactive
validation (media parts included: their bytes, base64 in JSONL as protobuf's JSON mapping has it,
are kept with the item's spec for the gateway to park in Redis). Errors are collected for every
item; the whole batch is rejected unless `skip_invalid_items`. A chat item whose reply would be spoken
(`request.speech`) is refused: a batch speaks through speech items.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from google.protobuf import json_format

from gateway.api import pb
from gateway.config import GatewayConfig
from gateway.convert import request_to_job
from gateway.errors import Rejection, invalid
from gateway.image import image_request_to_job
from gateway.media import MediaBlob
from gateway.speech import speech_request_to_job
from gateway.state import ModelState
from pipelines.batches import BatchRecord, ItemResult
from pipelines.protocol import GenerateJob

MAX_LISTED_ERRORS = 20
JSONL_KEYS = ("custom_id", "method", "body")
# a JSONL line's "method" -> the message its body is (no "method": Generate)
JSONL_METHODS = {
    "Generate": pb.GenerateRequest,
    "GenerateImage": pb.GenerateImageRequest,
    "SynthesizeSpeech": pb.SynthesizeSpeechRequest,
}
# the message an item's request is -> what validates it into a job
TO_JOB = {
    pb.GenerateRequest: request_to_job,
    pb.GenerateImageRequest: image_request_to_job,
    pb.SynthesizeSpeechRequest: speech_request_to_job,
}
ItemRequest = pb.GenerateRequest | pb.GenerateImageRequest | pb.SynthesizeSpeechRequest


@dataclass(frozen=True)
class BatchItemSpec:
    """One validated input item: a job to queue, or (skip_invalid_items) the error it fails with."""

    index: int
    custom_id: str
    job: GenerateJob | None = None
    error: str = ""  # where + what, e.g. "line 3: sampling.temperature must be >= 0, got -1"
    blobs: tuple[MediaBlob, ...] = ()  # the media bytes the job references


@dataclass(frozen=True)
class _RawItem:
    where: str  # "line 3" | "items[2]"
    custom_id: str
    request: ItemRequest | None
    error: str = ""  # a problem found before conversion (JSON, custom_id)


def parse_batch(
    req: pb.CreateBatchRequest,
    cfg: GatewayConfig,
    state: ModelState | None,
    *,
    batch_id: str,
    submitted_at: float,
) -> list[BatchItemSpec]:
    """Every item of `req` in input order; raises INVALID_ARGUMENT for a bad batch (see module doc)."""
    if not math.isfinite(req.completion_window_s) or req.completion_window_s < 0:
        raise invalid(f"completion_window_s must be >= 0 (0 = none), got {req.completion_window_s:g}")
    raws = _raw_items(req, cfg.max_batch_items)
    _check_custom_ids(raws)
    specs = [
        _convert(i, raw, req.model, cfg, state, batch_id=batch_id, submitted_at=submitted_at)
        for i, raw in enumerate(raws)
    ]
    errors = [s.error for s in specs if s.error]
    if errors and not req.skip_invalid_items:
        listed = "; ".join(errors[:MAX_LISTED_ERRORS])
        more = f" (and {len(errors) - MAX_LISTED_ERRORS} more)" if len(errors) > MAX_LISTED_ERRORS else ""
        raise invalid(
            f"{len(errors)} of {len(specs)} batch items are invalid (set skip_invalid_items to run "
            f"the valid ones): {listed}{more}"
        )
    return specs


def _raw_items(req: pb.CreateBatchRequest, limit: int) -> list[_RawItem]:
    if req.items and req.jsonl:
        raise invalid("items and jsonl are both set: send the batch's items one way")
    if req.items:
        _check_count(len(req.items), limit)
        return [_inline_item(i, it) for i, it in enumerate(req.items)]
    if not req.jsonl:
        raise invalid("the batch is empty: set items or jsonl")
    try:
        text = req.jsonl.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"jsonl is not valid UTF-8 (at byte {exc.start})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise invalid("the batch is empty: jsonl has no non-blank line")
    _check_count(len(lines), limit)
    return [_jsonl_item(n, line) for n, line in lines]


def _inline_item(i: int, item: pb.BatchItem) -> _RawItem:
    where = f"items[{i}]"
    kinds = [k for k in ("request", "image_request", "speech_request") if item.HasField(k)]
    if len(kinds) > 1:
        both = "both" if len(kinds) == 2 else "all"
        return _RawItem(where, item.custom_id, None, f"{where}: {' and '.join(kinds)} are {both} set")
    return _RawItem(where, item.custom_id, getattr(item, kinds[0] if kinds else "request"))


def _check_count(n: int, limit: int) -> None:
    if n > limit:
        raise invalid(f"the batch has {n} items, at most {limit} are allowed (max_batch_items)")


def _jsonl_item(n: int, line: str) -> _RawItem:
    where = f"line {n}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return _RawItem(where, "", None, f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:  # arrays / objects nested about a thousand deep
        return _RawItem(where, "", None, f"{where}: JSON nested too deeply")
    if not isinstance(obj, dict):
        return _RawItem(where, "", None, f"{where}: must be a JSON object with custom_id and body")
    custom_id = obj.get("custom_id")
    custom_id = custom_id if isinstance(custom_id, str) else ""
    unknown = sorted(set(obj) - set(JSONL_KEYS))
    if unknown:
        return _RawItem(where, custom_id, None, f"{where}: unknown key(s) {', '.join(unknown)}")
    method = obj.get("method", "Generate")
    message = JSONL_METHODS.get(method) if isinstance(method, str) else None
    if message is None:
        *first, final = JSONL_METHODS
        known = f"{', '.join(first)} or {final}"
        return _RawItem(where, custom_id, None, f"{where}: unknown method {method!r} ({known})")
    body = obj.get("body")
    if not isinstance(body, dict):
        name = message.DESCRIPTOR.name
        return _RawItem(where, custom_id, None, f"{where}: body must be a JSON object (a {name})")
    try:
        request = json_format.ParseDict(body, message())
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        return _RawItem(where, custom_id, None, f"{where}: body: {exc}")
    return _RawItem(where, custom_id, request)


def _check_custom_ids(raws: list[_RawItem]) -> None:
    """Mark items whose custom_id is missing or repeats an earlier one (the first one stays valid)."""
    seen: dict[str, str] = {}
    for i, raw in enumerate(raws):
        if raw.error:
            continue
        problem = ""
        if not raw.custom_id:
            problem = f"{raw.where}: custom_id is missing or empty"
        elif raw.custom_id in seen:
            problem = f"{raw.where}: custom_id {raw.custom_id!r} repeats {seen[raw.custom_id]}"
        else:
            seen[raw.custom_id] = raw.where
        if problem:
            raws[i] = _RawItem(raw.where, raw.custom_id, raw.request, problem)


def _convert(
    index: int,
    raw: _RawItem,
    model: str,
    cfg: GatewayConfig,
    state: ModelState | None,
    *,
    batch_id: str,
    submitted_at: float,
) -> BatchItemSpec:
    if raw.error:
        return BatchItemSpec(index, raw.custom_id, error=raw.error)
    request = type(raw.request)()
    request.CopyFrom(raw.request)
    if request.model and request.model != model:
        message = f"model {request.model!r} differs from the batch's model {model!r}"
        return BatchItemSpec(index, raw.custom_id, error=f"{raw.where}: {message}")
    request.model = model
    request.request_id = f"{batch_id}-{index}"
    if isinstance(request, pb.GenerateRequest) and request.HasField("speech"):
        message = "speech: spoken chat replies are not batched; use SynthesizeSpeech items to make audio"
        return BatchItemSpec(index, raw.custom_id, error=f"{raw.where}: {message}")
    try:
        job, blobs = TO_JOB[type(request)](request, cfg, state, submitted_at=submitted_at)
    except Rejection as rej:
        return BatchItemSpec(index, raw.custom_id, error=f"{raw.where}: {rej.message}")
    return BatchItemSpec(index, raw.custom_id, job=job, blobs=tuple(blobs))


# ---- records -> replies ------------------------------------------------------------------------
def record_to_pb(record: BatchRecord) -> pb.Batch:
    u = record.usage
    return pb.Batch(
        id=record.id,
        model=record.model,
        status=pb.BatchStatus.Value(record.status.name),
        counts=pb.BatchCounts(total=record.total, completed=record.completed, failed=record.failed),
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        expires_at=record.expires_at,
        metadata=record.metadata,
        usage=pb.Usage(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            reasoning_tokens=u.reasoning_tokens,
            cached_prompt_tokens=u.cached_prompt_tokens,
            forwards=u.forwards,
            tokens_per_forward=u.tokens_per_forward,
        ),
    )


def result_to_pb(result: ItemResult) -> pb.BatchResult:
    out = pb.BatchResult(index=result.index, custom_id=result.custom_id)
    if result.error is not None:
        out.error.code = str(result.error.get("code", "INTERNAL"))
        out.error.message = str(result.error.get("message", ""))
        return out
    speech = result.speech_response
    try:
        if result.image_response is not None:
            out.image_response.SetInParent()
            json_format.ParseDict(result.image_response, out.image_response, ignore_unknown_fields=True)
        elif speech is not None:
            out.speech_response.SetInParent()
            json_format.ParseDict(speech, out.speech_response, ignore_unknown_fields=True)
        else:
            json_format.ParseDict(result.response or {}, out.response, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        out.error.code, out.error.message = "INTERNAL", f"the item's stored response is unreadable: {exc}"
    return out
