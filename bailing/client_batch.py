"""The client's batch jobs: their data (`BatchInfo`, `BatchItemResult`) and its bailing.v1 conversion.

Flow: JSONL bytes or (custom_id, fields) items -> `build_batch_request` -> `CreateBatchRequest`;
`Batch` -> `BatchInfo`; `BatchResult` -> `BatchItemResult` (a `Completion`, an image item's
`ImageResult`, a speech item's `SpeechResult`, or an error), written back as one JSONL line by
`to_json_line`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from google.protobuf import json_format

from bailing.client_convert import (
    Choice,
    Completion,
    Usage,
    build_request,
    completion_from_pb,
    invalid_argument,
    usage_from_pb,
)
from bailing.client_image import ImageResult, build_image_request, image_result_from_pb, image_result_to_pb
from bailing.client_speech import (
    SpeechResult,
    build_speech_request,
    speech_result_from_pb,
    speech_result_to_pb,
)
from bailing.client_structured import tool_calls_to_pb
from gateway.api import pb
from gateway.replies import logprobs_pb
from pipelines.batches import TERMINAL_STATUSES

IMAGE_METHOD = "GenerateImage"  # an item's "method" that makes it an image item
SPEECH_METHOD = "SynthesizeSpeech"  # ... a speech item


class BatchItemError(NamedTuple):
    code: str  # a gRPC status name: INVALID_ARGUMENT, CANCELLED, DEADLINE_EXCEEDED, ...
    message: str


@dataclass(frozen=True)
class BatchInfo:
    """A queued batch job. Times are unix seconds (0 = not yet; expires_at 0 = no completion window)."""

    id: str
    model: str
    status: str  # validating, queued, running, completed, failed, cancelling, cancelled, expiring, expired
    total: int
    completed: int  # items with a response
    failed: int  # items with an error
    created_at: float
    started_at: float
    finished_at: float
    expires_at: float
    metadata: dict[str, str]
    usage: Usage  # summed over the completed items

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class BatchItemResult:
    """The outcome of one finished item: exactly one of `response`, `image_response`, `speech_response`
    and `error` is set."""

    index: int  # position in the input
    custom_id: str
    response: Completion | None = None
    error: BatchItemError | None = None
    image_response: ImageResult | None = None  # an image item's images
    speech_response: SpeechResult | None = None  # a speech item's clip

    def to_json_line(self) -> str:
        """One JSONL line: `{"custom_id", "response": <GenerateResponse JSON>}`, `{"custom_id",
        "image_response": <GenerateImageResponse JSON, image bytes base64>}`, `{"custom_id",
        "speech_response": <SynthesizeSpeechResponse JSON, audio base64>}` or `{"custom_id", "error":
        {"code", "message"}}`."""
        record: dict[str, Any] = {"custom_id": self.custom_id}
        if self.response is not None:
            record["response"] = _as_json(completion_to_pb(self.response))
        elif self.image_response is not None:
            record["image_response"] = _as_json(image_result_to_pb(self.image_response))
        elif self.speech_response is not None:
            record["speech_response"] = _as_json(speech_result_to_pb(self.speech_response))
        else:
            code, message = self.error or BatchItemError("UNKNOWN", "no outcome")
            record["error"] = {"code": code, "message": message}
        return json.dumps(record, ensure_ascii=False)


def _as_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def build_batch_request(
    model: str,
    jsonl: bytes | None,
    items: Iterable[tuple[str, Mapping[str, Any]]] | None,
    completion_window_s: float = 0.0,
    skip_invalid_items: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Any:
    """A `CreateBatchRequest` from JSONL bytes or from (custom_id, fields) pairs: `generate` keyword
    fields, or with "method": "GenerateImage" `generate_image` keyword fields (prompt=... included), or
    with "method": "SynthesizeSpeech" `synthesize_speech` keyword fields (text=... included)."""
    if not isinstance(model, str) or not model:
        raise invalid_argument("model", "a model name is required")
    if (jsonl is None) == (items is None):
        raise invalid_argument("items", "give exactly one of jsonl and items")
    request = pb.CreateBatchRequest(
        model=model,
        completion_window_s=completion_window_s,
        skip_invalid_items=skip_invalid_items,
        metadata=dict(metadata or {}),
    )
    if jsonl is not None:
        request.jsonl = bytes(jsonl)
    for i, (custom_id, fields) in enumerate(items or ()):
        if not isinstance(fields, Mapping):
            raise invalid_argument(
                f"items[{i}]", f"the request fields are a dict, got {type(fields).__name__}"
            )
        request.items.append(_item(f"items[{i}]", custom_id, model, fields))
    return request


def _item(where: str, custom_id: str, model: str, fields: Mapping[str, Any]) -> Any:
    fields = dict(fields)
    method = fields.pop("method", "Generate")
    if method == IMAGE_METHOD:
        return pb.BatchItem(custom_id=custom_id, image_request=build_image_request(model, **fields))
    if method == SPEECH_METHOD:
        return pb.BatchItem(custom_id=custom_id, speech_request=build_speech_request(model, **fields))
    if method != "Generate":
        known = f"Generate, {IMAGE_METHOD} or {SPEECH_METHOD}"
        raise invalid_argument(f"{where}.method", f"{known} is required, got {method!r}")
    return pb.BatchItem(custom_id=custom_id, request=build_request(model, **fields))


def completion_to_pb(completion: Completion) -> Any:
    """The `GenerateResponse` a `Completion` came from (for writing results as JSON)."""
    u, t = completion.usage, completion.timing
    return pb.GenerateResponse(
        request_id=completion.request_id,
        model=completion.model,
        text=completion.text,
        reasoning_text=completion.reasoning_text,
        finish_reason=completion.finish_reason,
        usage=pb.Usage(**asdict(u), tokens_per_forward=u.tokens_per_forward),
        timing=pb.Timing(queue_s=t.queue_s, time_to_first_token_s=t.time_to_first_token_s, total_s=t.total_s),
        choices=[_choice_to_pb(c) for c in completion.choices],
        tool_calls=tool_calls_to_pb(completion.tool_calls),
        logprobs=logprobs_pb(completion.logprobs),
    )


def _choice_to_pb(c: Choice) -> Any:
    return pb.Choice(
        index=c.index,
        text=c.text,
        reasoning_text=c.reasoning_text,
        finish_reason=c.finish_reason,
        completion_tokens=c.completion_tokens,
        reasoning_tokens=c.reasoning_tokens,
        tool_calls=tool_calls_to_pb(c.tool_calls),
        logprobs=logprobs_pb(c.logprobs),
    )


def batch_status_name(value: int) -> str:
    name = pb.BatchStatus.Name(value) if value in pb.BatchStatus.values() else "BATCH_STATUS_UNSPECIFIED"
    return "unspecified" if name == "BATCH_STATUS_UNSPECIFIED" else name.lower()


def batch_from_pb(msg: Any) -> BatchInfo:
    return BatchInfo(
        id=msg.id,
        model=msg.model,
        status=batch_status_name(msg.status),
        total=msg.counts.total,
        completed=msg.counts.completed,
        failed=msg.counts.failed,
        created_at=msg.created_at,
        started_at=msg.started_at,
        finished_at=msg.finished_at,
        expires_at=msg.expires_at,
        metadata=dict(msg.metadata),
        usage=usage_from_pb(msg.usage),
    )


def batch_result_from_pb(msg: Any) -> BatchItemResult:
    outcome = msg.WhichOneof("outcome")
    if outcome == "response":
        return BatchItemResult(msg.index, msg.custom_id, response=completion_from_pb(msg.response))
    if outcome == "image_response":
        return BatchItemResult(
            msg.index, msg.custom_id, image_response=image_result_from_pb(msg.image_response)
        )
    if outcome == "speech_response":
        return BatchItemResult(
            msg.index, msg.custom_id, speech_response=speech_result_from_pb(msg.speech_response)
        )
    error = BatchItemError(msg.error.code, msg.error.message) if outcome == "error" else None
    return BatchItemResult(msg.index, msg.custom_id, error=error or BatchItemError("UNKNOWN", "no outcome"))
