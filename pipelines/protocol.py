"""What the gateway and the workers exchange: jobs (Celery payloads), stream events, Redis key names.

Torch-free: the gateway imports it. Flow of one request: the gateway builds a `GenerateJob` and sends
the Celery task `TASK_GENERATE` (payload `job.to_dict()`, task id = request id) to
`queue_name(model)`; a worker appends `Event`s to `stream_key(request_id)`, always ending with one
terminal event; the gateway reads them with XREAD. Media bytes live under `media_key(sha256)`; the
job carries only the key. Cancels are a key (`cancel_key`) plus a message on `CANCEL_CHANNEL`.
Live workers heartbeat into the sorted set `workers_key(model)` (member = worker id, score = unix
time) and describe themselves under `worker_info_key(worker_id)`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from pipelines.logprob_spec import (  # noqa: F401 - re-exported: the gateway and workers import them here
    TokenLogprob,
    TopLogprob,
    logprobs_from_json,
    logprobs_to_json,
)
from pipelines.media_out import (  # noqa: F401 - re-exported: the gateway and workers import them from here
    AUDIO_FORMATS,
    IMAGE_FORMATS,
    IMAGE_TTL_S,
    AudioChunkInfo,
    ImageInfo,
    ImageOptions,
    ImageSummary,
    SpeechOptions,
    SpeechSummary,
    audio_key,
    image_key,
)
from pipelines.structured_spec import (  # re-exported like the media types above
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    response_format_from_dict,
    tool_calls_from_dicts,
    tools_from_dicts,
)

TASK_GENERATE = "bailing.generate"
# An image job handed from a thinker worker to a diffusion-stage worker (payload: `ImageHandoff`)
TASK_IMAGE_STAGE = "bailing.image_stage"
IMAGE_STAGE = "image-stage"  # the stage workers' role: their queue and registry names end in it
CANCEL_CHANNEL = "bailing:cancel"
HEARTBEAT_INTERVAL_S = 1.0
WORKER_DEAD_AFTER_S = 3.0  # no heartbeat for this long: the worker is gone
STREAM_TTL_S = 3600  # a request's event stream outlives its reader by this much
# Once the gateway relayed a stream's terminal event, the stream (and the claim of a client-chosen
# request id, which may then be used again) goes sooner: a long soak otherwise grew Redis by every
# finished request for an hour. The gateway is a finished stream's only reader, and the redeliveries
# that could still find it come within seconds (batch recovery) or after the visibility timeout (an
# hour, long past any retention), so 30 s is plenty; a redelivery after it finds no stream and re-runs
# a job whose answer the client already has, which only costs compute. At 120 s a 64-stream soak kept
# ~5k finished streams alive and Valkey's RSS was still ramping at minute 2.
FINISHED_STREAM_TTL_S = 30
MEDIA_TTL_S = 3600
MODALITIES = ("text", "image", "audio", "video")
MAX_SAMPLES = 16  # sampling.n may be 1..MAX_SAMPLES
MAX_LOGPROBS = 20  # sampling.logprobs may be 0..MAX_LOGPROBS (engine/sampling_params.py's limit)
# What a job asks of its model (GenerateJob.task): "generate" answers the messages / prompt;
# "transcribe" (ASR) has one user message holding one audio part, and the worker builds the model's
# transcription prompt around it (the family's instruction text, then the audio); "image" draws
# `GenerateJob.image.num_images` images for one user message (its text is the prompt or the edit
# instruction, an image part in it is the reference image to edit).
TASKS = ("generate", "transcribe", "image", "speech")
# "speech" says the text of its one user message (an audio part in it: the speaker clip to clone).
# What a model can produce (WorkerInfo.outputs): text always; "image" with image-generation heads,
# "audio" with a talker.
OUTPUTS = ("text", "image", "audio")


def queue_name(model: str) -> str:
    return f"bailing.{model}"


def stage_queue_name(model: str) -> str:
    """The queue of `model`'s diffusion-stage workers (`bailing worker --role image-stage`)."""
    return f"bailing.{model}.{IMAGE_STAGE}"


def stage_workers_key(model: str) -> str:
    """The heartbeat registry of `model`'s diffusion-stage workers (they take no other jobs)."""
    return f"bailing:workers:{model}:{IMAGE_STAGE}"


def handoff_key(request_id: str) -> str:
    """Where a thinker worker parks a request's condition tensors for the stage worker (safetensors)."""
    return f"bailing:handoff:{request_id}"


def stream_key(request_id: str) -> str:
    return f"bailing:out:{request_id}"


def claim_key(request_id: str) -> str:
    """Set (NX) by the gateway that accepted a client-chosen request id: one id, one request."""
    return f"bailing:claim:{request_id}"


def cancel_key(request_id: str) -> str:
    return f"bailing:cancel:{request_id}"


def media_key(sha256_hex: str) -> str:
    return f"bailing:media:{sha256_hex}"


def workers_key(model: str) -> str:
    return f"bailing:workers:{model}"


def worker_info_key(worker_id: str) -> str:
    return f"bailing:worker:{worker_id}"


# ---- the job ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaRef:
    """A media part stored in Redis: `key` holds the bytes until the TTL passes."""

    kind: str  # image, audio, video
    key: str
    mime_type: str
    size: int


@dataclass(frozen=True)
class Part:
    type: str  # text, image, audio, video
    text: str = ""
    media: MediaRef | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: str
    parts: tuple[Part, ...]
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls
    tool_call_id: str = ""  # a tool turn: the call it answers


@dataclass(frozen=True)
class Sampling:
    """Sampling options as the client set them; None = the model's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int = 1
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    logprobs: int | None = None  # top alternatives per answer token, 0..MAX_LOGPROBS; None: no logprobs


@dataclass(frozen=True)
class GenerateJob:
    request_id: str
    model: str
    prompt: str | None = None  # exactly one of prompt and messages
    messages: tuple[ChatMessage, ...] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    enable_thinking: bool | None = None
    thinking_budget: int | None = None
    # Block-diffusion options the client set (engine DiffusionParams field names), None: none sent
    diffusion: dict[str, Any] | None = None
    task: str = "generate"  # one of TASKS
    image: ImageOptions | None = None  # task "image" only
    speech: SpeechOptions | None = None  # task "speech"; or a "generate" job whose reply is also spoken
    response_format: ResponseFormat | None = None  # None: free text
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True  # False: at most one call per reply
    priority: int = 0
    deadline: float | None = None  # unix time after which the result is useless
    submitted_at: float = 0.0  # unix time the gateway accepted it

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if (self.task == "image") != (self.image is not None):
            raise ValueError("image options go with task 'image', and task 'image' needs them")
        if self.task == "speech" and self.speech is None:
            raise ValueError("task 'speech' needs speech options")
        if self.speech is not None and self.task not in ("speech", "generate"):
            raise ValueError(f"speech options do not go with task {self.task!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateJob:
        """Inverse of `to_dict` (after a JSON round trip); unknown keys are an error, missing ones
        take their defaults (a payload from before `task` is a "generate" job)."""
        data = dict(data)
        data["sampling"] = _sampling_from_dict(data.get("sampling") or {})
        if data.get("messages") is not None:
            data["messages"] = tuple(_message_from_dict(m) for m in data["messages"])
        if data.get("image") is not None:
            data["image"] = ImageOptions(**data["image"])
        if data.get("speech") is not None:
            data["speech"] = SpeechOptions(**data["speech"])
        data["response_format"] = response_format_from_dict(data.get("response_format"))
        data["tools"] = tools_from_dicts(data.get("tools"))
        data["tool_choice"] = ToolChoice(**(data.get("tool_choice") or {}))
        return cls(**data)


def _sampling_from_dict(data: dict[str, Any]) -> Sampling:
    data = dict(data)
    data["stop"] = tuple(data.get("stop") or ())
    data["stop_token_ids"] = tuple(data.get("stop_token_ids") or ())
    return Sampling(**data)


def _message_from_dict(data: dict[str, Any]) -> ChatMessage:
    parts = []
    for p in data["parts"]:
        media = MediaRef(**p["media"]) if p.get("media") else None
        parts.append(Part(type=p["type"], text=p.get("text", ""), media=media))
    calls = tool_calls_from_dicts(data.get("tool_calls"))
    return ChatMessage(data["role"], tuple(parts), calls, data.get("tool_call_id", ""))


# ---- the events --------------------------------------------------------------------------------
class EventType(StrEnum):
    STARTED = "started"  # a worker took the request (carries worker_id)
    DELTA = "delta"  # new text / reasoning text
    PROGRESS = "progress"  # a long generation advanced: info {"step": i, "steps": n} (i = steps done)
    IMAGE = "image"  # a generated image is stored: info = ImageInfo fields (its bytes under info["key"])
    AUDIO = "audio"  # a chunk of speech is stored: info = AudioChunkInfo fields (bytes under info["key"])
    DONE = "done"  # terminal: finished normally (finish_reason, usage)
    ERROR = "error"  # terminal: failed (error_code, message)
    CANCELLED = "cancelled"  # terminal: cancelled or past its deadline


TERMINAL_EVENTS = frozenset({EventType.DONE, EventType.ERROR, EventType.CANCELLED})


class ErrorCode(StrEnum):
    """The gRPC status a worker-side failure maps to (the names of grpc.StatusCode)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_prompt_tokens: int = 0
    forwards: int = 0  # model forward passes that produced the completion tokens (all choices)

    @property
    def tokens_per_forward(self) -> float:
        return self.completion_tokens / self.forwards if self.forwards else 0.0


@dataclass(frozen=True)
class ChoiceSummary:
    """How one of a request's n samples ended (DONE events of requests with n > 1 carry all of them)."""

    index: int
    finish_reason: str
    completion_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Event:
    """One entry of a request's stream.

    DELTA: `text` / `reasoning_text` are new text of choice `index` (0 unless the request asked for
    n > 1), `tool_calls` the calls of that choice completed since its last DELTA, `logprobs` (when
    the request asked for them) those of its answer tokens decided since its last DELTA. DONE:
    `finish_reason` is choice 0's, `usage` sums all choices (the prompt counted once) and, for n > 1,
    `choices` says how each choice ended, in index order.
    """

    seq: int  # 0, 1, 2, ... within one request's stream
    type: EventType
    text: str = ""
    reasoning_text: str = ""
    index: int = 0  # the choice a DELTA belongs to
    finish_reason: str = ""
    usage: Usage | None = None
    choices: tuple[ChoiceSummary, ...] | None = None
    error_code: str = ""
    message: str = ""
    worker_id: str = ""
    time: float = 0.0  # unix time the worker emitted it
    info: dict[str, Any] | None = None  # extra structured facts, e.g. engine steps around a cancel
    tool_calls: tuple[ToolCall, ...] | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    def encode(self) -> dict[str, str]:
        """The fields of the stream entry (one JSON field, so entries stay self-describing)."""
        fields = asdict(replace(self, logprobs=None))
        data = {k: v for k, v in fields.items() if v not in ("", None) and (k != "index" or v)}
        if self.logprobs:
            data["logprobs"] = logprobs_to_json(self.logprobs)
        return {"e": json.dumps(data, separators=(",", ":"), ensure_ascii=False)}

    @classmethod
    def decode(cls, fields: dict[bytes | str, bytes | str]) -> Event:
        raw = fields.get(b"e", fields.get("e"))
        data = json.loads(raw)
        data["type"] = EventType(data["type"])
        if data.get("usage") is not None:
            data["usage"] = Usage(**data["usage"])
        if data.get("choices") is not None:
            data["choices"] = tuple(ChoiceSummary(**c) for c in data["choices"])
        if data.get("tool_calls") is not None:
            data["tool_calls"] = tool_calls_from_dicts(data["tool_calls"])
        if data.get("logprobs") is not None:
            data["logprobs"] = logprobs_from_json(data["logprobs"])
        return cls(**data)


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker announces about itself (JSON under `worker_info_key`)."""

    worker_id: str
    model: str
    family: str
    host: str
    pid: int
    device: str
    max_num_seqs: int
    max_model_len: int
    modalities: tuple[str, ...] = ("text",)
    outputs: tuple[str, ...] = ("text",)  # what the model produces: OUTPUTS it has heads for
    voices: tuple[str, ...] = ()  # voice presets of its talker (the first is the default)
    started_at: float = 0.0
    metrics_port: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerInfo:
        data = json.loads(raw)
        data["modalities"] = tuple(data.get("modalities") or ("text",))
        data["outputs"] = tuple(data.get("outputs") or ("text",))
        data["voices"] = tuple(data.get("voices") or ())
        return cls(**data)
