"""WorkerConfig: everything one worker process needs, built once by `bailing worker` and passed down.

Frozen and validated on creation: an invalid value raises ValueError naming the field.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.parallel.group import ParallelConfig
from engine.parallel.placement import GroupPlacement
from models.family import known_families

KNOWN_FAMILIES = frozenset(known_families())  # families this worker can serve (`models.family`)
ROLES = ("model", "image-stage")
IMAGE_STAGES = ("local", "remote")


def _positive_int(name: str, value: object, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"WorkerConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"WorkerConfig.{name} must be a number > 0, got {value!r}")


@dataclass(frozen=True)
class WorkerConfig:
    redis_url: str
    family: str
    model_dir: Path
    name: str = ""  # the served model name (queue, registry); "" = the family
    device: str = "cpu"
    dtype: str | None = None  # None: the engine's choice for the device
    compile_decode: bool | None = None  # None: the engine's default (engine.decode_graph)
    quantization: str | None = None  # "int8": weight-only int8 (engine.int8)
    max_num_seqs: int = 64  # requests running at once (also the Celery thread count)
    kv_cache_bytes: int | None = None  # None: the engine's default
    max_model_len: int | None = None  # None: the model's context length
    default_max_tokens: int = 256  # when a client leaves max_tokens unset (capped at the context)
    metrics_port: int = 0  # Prometheus HTTP port; 0 = no metrics server
    visibility_timeout_s: int = 3600  # unacked jobs are redelivered after this long
    shutdown_grace_s: float = 240.0  # on SIGTERM, requests still running after this long end UNAVAILABLE
    worker_id: str = ""  # "" = f"{name}@{hostname}:{pid}"
    logits_processors: tuple[str, ...] = ()  # "module:factory" paths; factory(tokenizer) -> processor
    max_batch_inflight: int | None = None  # batch items running at once; None = max(1, max_num_seqs // 2)
    batch_prefill_tokens: int = 256  # prompt tokens per engine step for all batch items together
    # Media limits of a multimodal family (None: the processor's defaults; see pipelines.media)
    max_image_pixels: int | None = None
    max_audio_seconds: float | None = None
    max_video_seconds: float | None = None
    max_video_frames: int | None = None
    # Image generation (checkpoints with generation heads): per-request limits
    max_image_steps: int = 200
    max_images_per_request: int = 4
    # "model": serve the model's queue (thinker, and a local image stage); "image-stage": a diffusion
    # stage of its own, fed by thinker workers started with image_stage "remote" (workers.image_handoff)
    role: str = "model"
    image_stage: str = "local"  # "local": denoise in this worker; "remote": hand requests to stage workers
    # Speech output (checkpoints with a talker): per-request limits
    max_speech_text_chars: int = 2000  # text of one speech job
    max_speech_seconds: float = 120.0  # audio out per request
    min_speaker_clip_seconds: float = 1.0  # a speaker clip to clone
    max_speaker_clip_seconds: float = 30.0
    max_speaker_clip_bytes: int = 16 * 2**20
    # One model over several ranks (engine.parallel): this process is rank 0 (the Celery consumer)
    # on node 0, or only hosts follower ranks (node_rank > 0); torchrun's variables override these.
    tensor_parallel_size: int = 1
    expert_parallel: bool = False
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None: a free port (one node only)

    def __post_init__(self) -> None:
        if self.family not in KNOWN_FAMILIES:
            raise ValueError(
                f"WorkerConfig.family must be one of {sorted(KNOWN_FAMILIES)}, got {self.family!r}"
            )
        if not isinstance(self.redis_url, str) or "://" not in self.redis_url:
            raise ValueError(f"WorkerConfig.redis_url must be a redis:// URL, got {self.redis_url!r}")
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        name = self.name or self.family
        if any(c.isspace() for c in name) or "@" in name:
            raise ValueError(f"WorkerConfig.name must not contain spaces or '@', got {name!r}")
        object.__setattr__(self, "name", name)
        if not self.worker_id:
            object.__setattr__(self, "worker_id", f"{name}@{socket.gethostname()}:{os.getpid()}")
        for path in self.logits_processors:
            module, _, attr = path.partition(":")
            if not module or not attr:
                raise ValueError(
                    f"WorkerConfig.logits_processors entries must be 'module:factory', got {path!r}"
                )
        _positive_int("max_num_seqs", self.max_num_seqs)
        _positive_int("max_batch_inflight", self.max_batch_inflight, allow_none=True)
        _positive_int("batch_prefill_tokens", self.batch_prefill_tokens)
        _positive_int("max_image_pixels", self.max_image_pixels, allow_none=True)
        _positive_int("max_video_frames", self.max_video_frames, allow_none=True)
        if self.role not in ROLES:
            raise ValueError(f"WorkerConfig.role must be one of {ROLES}, got {self.role!r}")
        if self.image_stage not in IMAGE_STAGES:
            stage = self.image_stage
            raise ValueError(f"WorkerConfig.image_stage must be one of {IMAGE_STAGES}, got {stage!r}")
        _positive_int("max_image_steps", self.max_image_steps)
        _positive_int("max_images_per_request", self.max_images_per_request)
        _positive_int("max_speech_text_chars", self.max_speech_text_chars)
        _positive_int("max_speaker_clip_bytes", self.max_speaker_clip_bytes)
        for name in ("max_speech_seconds", "min_speaker_clip_seconds", "max_speaker_clip_seconds"):
            _positive_number(name, getattr(self, name))
        if self.min_speaker_clip_seconds > self.max_speaker_clip_seconds:
            raise ValueError(
                "WorkerConfig.min_speaker_clip_seconds must be <= max_speaker_clip_seconds, got "
                f"{self.min_speaker_clip_seconds} > {self.max_speaker_clip_seconds}"
            )
        for name in ("max_audio_seconds", "max_video_seconds"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            ):
                raise ValueError(f"WorkerConfig.{name} must be a number > 0, got {value!r}")
        if self.max_batch_inflight is None:
            object.__setattr__(self, "max_batch_inflight", max(1, self.max_num_seqs // 2))
        _positive_int("kv_cache_bytes", self.kv_cache_bytes, allow_none=True)
        _positive_int("max_model_len", self.max_model_len, allow_none=True, minimum=2)
        _positive_int("default_max_tokens", self.default_max_tokens)
        _positive_int("metrics_port", self.metrics_port, minimum=0)
        if self.metrics_port > 65535:
            raise ValueError(f"WorkerConfig.metrics_port must be <= 65535, got {self.metrics_port}")
        _positive_int("visibility_timeout_s", self.visibility_timeout_s)
        grace = self.shutdown_grace_s
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace < float("inf"):
            raise ValueError(f"WorkerConfig.shutdown_grace_s must be a number >= 0, got {grace!r}")
        try:
            self.placement({})
        except ValueError as exc:
            raise ValueError(f"WorkerConfig: {exc}") from None

    def placement(self, environ: Mapping[str, str]) -> GroupPlacement:
        """Where this worker's ranks run: from torchrun's variables when it launched us, else the fields."""
        under_torchrun = GroupPlacement.from_torchrun(environ, self.expert_parallel)
        if under_torchrun is not None:
            return under_torchrun
        parallel = ParallelConfig(self.tensor_parallel_size, self.expert_parallel)
        return GroupPlacement(parallel, self.nnodes, self.node_rank, self.master_addr, self.master_port)
