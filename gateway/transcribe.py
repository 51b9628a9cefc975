"""The protobuf boundary of Transcribe: TranscribeRequest -> GenerateJob(task="transcribe"), and the
Generate replies (`replies.ResponseBuilder` / `replies.event_to_chunks`) -> transcript replies.

The job is one user message holding the audio part (validated like Generate's audio parts, errors
naming the field "audio"); the worker builds the model's ASR prompt around it. Reasoning text is
not part of a transcript and is dropped.
"""

from __future__ import annotations

import dataclasses

from gateway.api import pb
from gateway.config import GatewayConfig
from gateway.convert import check_model, check_request_id, media_part, sampling_from_pb
from gateway.errors import invalid
from gateway.media import FORMATS, MediaBlob
from gateway.replies import event_to_chunks
from gateway.state import ModelState
from pipelines.protocol import ChatMessage, Event, GenerateJob

AUDIO_FORMATS = ", ".join(f.name for f in FORMATS if f.kind == "audio")


def transcribe_to_job(
    req: pb.TranscribeRequest,
    cfg: GatewayConfig,
    state: ModelState | None,
    *,
    submitted_at: float,
    deadline: float | None = None,
) -> tuple[GenerateJob, list[MediaBlob]]:
    """Validate `req` into a transcribe job plus its audio bytes; `state` None skips live checks."""
    check_model(req.model, cfg.models)
    request_id = check_request_id(req.request_id)
    if not req.audio.data:
        raise invalid(f"audio is empty: send the bytes of one audio file ({AUDIO_FORMATS})")
    blobs: list[MediaBlob] = []
    audio = media_part("audio", "audio", req.audio, cfg, state, blobs)
    if req.sampling.HasField("n") and req.sampling.n != 1:
        raise invalid(
            f"sampling.n must be 1 for a transcription (one transcript per request), got {req.sampling.n}"
        )
    if req.sampling.HasField("logprobs"):
        raise invalid(
            "sampling.logprobs is not served for transcriptions (TranscribeResponse has no field for them)"
        )
    job = GenerateJob(
        request_id=request_id,
        model=req.model,
        messages=(ChatMessage(role="user", parts=(audio,)),),
        sampling=sampling_from_pb(req.sampling, cfg, state),
        task="transcribe",
        priority=req.priority,
        deadline=deadline,
        submitted_at=submitted_at,
    )
    return job, blobs


def transcript_response(resp: pb.GenerateResponse) -> pb.TranscribeResponse:
    """The TranscribeResponse of a collected (n = 1) GenerateResponse: its text, not its reasoning."""
    return pb.TranscribeResponse(
        request_id=resp.request_id,
        model=resp.model,
        text=resp.text,
        finish_reason=resp.finish_reason,
        usage=resp.usage,
        timing=resp.timing,
    )


def transcript_chunks(request_id: str, event: Event) -> list[pb.GenerateChunk]:
    """`event_to_chunks` without reasoning deltas (same finish chunk, same errors)."""
    if event.reasoning_text:
        event = dataclasses.replace(event, reasoning_text="")
    return event_to_chunks(request_id, event)
