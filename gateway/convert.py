"""The protobuf boundary: GenerateRequest -> validated GenerateJob (events -> replies: `gateway.replies`).

Every user error becomes a `Rejection` (INVALID_ARGUMENT, unknown model NOT_FOUND) whose message
names the field, e.g. "sampling.top_p must be in (0, 1], got 0". Ranges mirror
engine/sampling_params.py without importing it (the gateway never loads torch). Nothing outside
this module sees a protobuf type.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

import grpc

from gateway.api import OPTIONAL_SAMPLING_FIELDS, pb
from gateway.config import GatewayConfig
from gateway.errors import Rejection, invalid
from gateway.media import MEDIA_KINDS, MediaBlob, MediaError, check_media
from gateway.state import ModelState
from gateway.structured import message_tool_fields, response_format_from_pb, tools_from_pb
from pipelines.protocol import (
    MAX_LOGPROBS,
    MAX_SAMPLES,
    ChatMessage,
    GenerateJob,
    MediaRef,
    Part,
    Sampling,
)

ROLES = ("system", "user", "assistant", "tool")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PENALTY_LIMIT = 2.0


def check_model(name: str, served: tuple[str, ...]) -> None:
    if not name:
        raise invalid(f"model is empty: name one of {', '.join(served)}")
    if name not in served:
        raise Rejection(
            grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served here (served: {', '.join(served)})"
        )


def request_to_job(
    req: pb.GenerateRequest,
    cfg: GatewayConfig,
    state: ModelState | None,
    *,
    submitted_at: float,
    deadline: float | None = None,
) -> tuple[GenerateJob, list[MediaBlob]]:
    """Validate `req` into a job plus the media bytes it references; `state` None skips live checks."""
    check_model(req.model, cfg.models)
    request_id = check_request_id(req.request_id)
    blobs: list[MediaBlob] = []
    if req.messages and req.prompt:
        raise invalid("messages and prompt are both set: send exactly one")
    if not req.messages and not req.prompt:
        raise invalid("messages and prompt are both empty: send one")
    messages = tuple(_message(i, m, cfg, state, blobs) for i, m in enumerate(req.messages)) or None
    enable_thinking, thinking_budget = _reasoning(req)
    # the worker rejects diffusion options for an autoregressive model (only its engine knows)
    diffusion = _diffusion(req) if req.HasField("diffusion") else None
    tools, tool_choice, parallel_tool_calls = tools_from_pb(req)
    job = GenerateJob(
        request_id=request_id,
        model=req.model,
        prompt=req.prompt or None,
        messages=messages,
        sampling=sampling_from_pb(req.sampling, cfg, state),
        enable_thinking=enable_thinking,
        thinking_budget=thinking_budget,
        diffusion=diffusion,
        response_format=response_format_from_pb(req),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel_tool_calls,
        priority=req.priority,
        deadline=deadline,
        submitted_at=submitted_at,
    )
    return job, blobs


def check_request_id(value: str) -> str:
    """The client's request id, checked; a fresh one when it sent none."""
    if not value:
        return uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(value):
        raise invalid(f"request_id must match {REQUEST_ID.pattern}, got {value[:140]!r}")
    return value


def _message(
    i: int, msg: pb.Message, cfg: GatewayConfig, state: ModelState | None, blobs: list[MediaBlob]
) -> ChatMessage:
    if msg.role not in ROLES:
        raise invalid(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {msg.role!r}")
    calls, call_id = message_tool_fields(i, msg)
    if not msg.content and not calls:
        raise invalid(f"messages[{i}].content is empty: every message needs at least one part")
    parts = tuple(
        _part(f"messages[{i}].content[{j}]", p, cfg, state, blobs) for j, p in enumerate(msg.content)
    )
    return ChatMessage(msg.role, parts, calls, call_id)


def _part(path: str, part: pb.ContentPart, cfg: GatewayConfig, state: ModelState | None, blobs) -> Part:
    kind = part.WhichOneof("part")
    if kind is None:
        raise invalid(f"{path} has no part set (one of text, image, audio, video)")
    if kind == "text":
        return Part(type="text", text=part.text)
    assert kind in MEDIA_KINDS, kind  # the proto's oneof: text + MEDIA_KINDS
    return media_part(f"{path}.{kind}", kind, getattr(part, kind), cfg, state, blobs)


def media_part(
    path: str, kind: str, media: pb.Media, cfg: GatewayConfig, state: ModelState | None, blobs
) -> Part:
    """A media part the live workers accept, its bytes appended to `blobs`; errors name `path`."""
    if state is not None and kind not in state.modalities:
        accepts = ", ".join(state.modalities)
        raise invalid(f"{path}: model {state.name!r} does not accept {kind} input (it accepts {accepts})")
    try:
        mime = check_media(kind, media.data, media.mime_type, cfg.max_media_bytes)
    except MediaError as exc:
        raise invalid(f"{path}: {exc}") from None
    blob = MediaBlob.of(media.data)
    blobs.append(blob)
    return Part(type=kind, media=MediaRef(kind=kind, key=blob.key, mime_type=mime, size=len(media.data)))


def _g(x: float) -> str:
    return f"{x:g}"


def _real(name: str, x: float, ok: bool, allowed: str) -> float:
    if not (math.isfinite(x) and ok):
        raise invalid(f"sampling.{name} must be {allowed}, got {_g(x)}")
    return x


def _opt(s: pb.SamplingParams, name: str):
    return getattr(s, name) if s.HasField(name) else None


def sampling_from_pb(s: pb.SamplingParams, cfg: GatewayConfig, state: ModelState | None) -> Sampling:
    v = {name: _opt(s, name) for name in OPTIONAL_SAMPLING_FIELDS}
    checks = {
        "temperature": (lambda x: x >= 0, ">= 0"),
        "top_p": (lambda x: 0 < x <= 1, "in (0, 1]"),
        "min_p": (lambda x: 0 <= x <= 1, "in [0, 1]"),
        "repetition_penalty": (lambda x: x > 0, "> 0"),
        "presence_penalty": (lambda x: -PENALTY_LIMIT <= x <= PENALTY_LIMIT, "in [-2, 2]"),
        "frequency_penalty": (lambda x: -PENALTY_LIMIT <= x <= PENALTY_LIMIT, "in [-2, 2]"),
    }
    for name, (ok, allowed) in checks.items():
        if v[name] is not None:
            _real(name, v[name], ok(v[name]), allowed)
    if v["top_k"] is not None and v["top_k"] < -1:
        raise invalid(f"sampling.top_k must be >= -1 (0 or -1 = off), got {v['top_k']}")
    max_tokens = _max_tokens(v["max_tokens"], cfg, state)
    _min_tokens(v["min_tokens"], max_tokens if max_tokens is not None else cfg.max_tokens_limit)
    n = 1 if v["n"] is None else v["n"]
    if not 1 <= n <= MAX_SAMPLES:
        raise invalid(f"sampling.n must be in [1, {MAX_SAMPLES}], got {n}")
    if v["logprobs"] is not None and not 0 <= v["logprobs"] <= MAX_LOGPROBS:
        raise invalid(
            f"sampling.logprobs must be in [0, {MAX_LOGPROBS}] (top alternatives per token), "
            f"got {v['logprobs']}"
        )
    stop = _stop(list(s.stop), cfg.max_stop_strings)
    for i, t in enumerate(s.stop_token_ids):
        if t < 0:
            raise invalid(f"sampling.stop_token_ids[{i}] must be >= 0, got {t}")
    v.pop("n")
    return Sampling(**v, n=n, stop=stop, stop_token_ids=tuple(s.stop_token_ids))


def _max_tokens(value: int | None, cfg: GatewayConfig, state: ModelState | None) -> int | None:
    if value is None:
        return None
    if not 1 <= value <= cfg.max_tokens_limit:
        raise invalid(f"sampling.max_tokens must be in [1, {cfg.max_tokens_limit}], got {value}")
    if state is not None and state.max_model_len and value > state.max_model_len:
        raise invalid(
            f"sampling.max_tokens must be <= {state.max_model_len} (the max_model_len of model "
            f"{state.name!r}), got {value}"
        )
    return value


def _min_tokens(value: int | None, max_tokens: int) -> None:
    if value is not None and not 0 <= value <= max_tokens:
        raise invalid(f"sampling.min_tokens must be in [0, max_tokens={max_tokens}], got {value}")


def _stop(stop: list[str], limit: int) -> tuple[str, ...]:
    if len(stop) > limit:
        raise invalid(f"sampling.stop has {len(stop)} strings, at most {limit} are allowed")
    for i, s in enumerate(stop):
        if not s:
            raise invalid(f"sampling.stop[{i}] is empty: stop strings must be non-empty")
    return tuple(stop)


def _reasoning(req: pb.GenerateRequest) -> tuple[bool | None, int | None]:
    r = req.reasoning
    enable = r.enable_thinking if r.HasField("enable_thinking") else None
    budget = r.thinking_budget if r.HasField("thinking_budget") else None
    if budget is not None and budget < 0:
        raise invalid(f"reasoning.thinking_budget must be >= 0, got {budget}")
    return enable, budget


DIFFUSION_DECODERS = ("llada2", "threshold", "hierarchy", "credit")


def _diffusion(req: pb.GenerateRequest) -> dict[str, Any]:
    """The diffusion options the client set, checked (the engine checks them again)."""
    d, out = req.diffusion, {}
    if d.HasField("block_length"):
        if not 1 <= d.block_length <= 1024:
            raise invalid(f"diffusion.block_length must be in [1, 1024], got {d.block_length}")
        out["block_length"] = d.block_length
    if d.HasField("steps"):
        if d.steps < 1:
            raise invalid(f"diffusion.steps must be >= 1, got {d.steps}")
        out["steps"] = d.steps
    for name in ("threshold", "low_threshold"):
        if d.HasField(name):
            value = getattr(d, name)
            if not 0.0 <= value <= 1.0:  # NaN fails too
                raise invalid(f"diffusion.{name} must be in [0, 1], got {value}")
            out[name] = value
    if d.decoder:
        if d.decoder not in DIFFUSION_DECODERS:
            raise invalid(
                f"diffusion.decoder must be one of {', '.join(DIFFUSION_DECODERS)}, got {d.decoder!r}"
            )
        out["decoder"] = d.decoder
    if "low_threshold" in out and out.get("decoder") != "hierarchy":
        raise invalid("diffusion.low_threshold applies to decoder 'hierarchy' only")
    for name in ("eos_early_stop", "prefix_cache"):
        if d.HasField(name):
            out[name] = getattr(d, name)
    return out


def list_models_response(states: list[ModelState]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_info(s) for s in states])


def model_info(state: ModelState) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=state.name,
        family=state.family,
        live_workers=state.live,
        max_model_len=state.max_model_len,
        modalities=list(state.modalities),
        outputs=list(state.outputs),
        voices=list(state.voices),
    )
