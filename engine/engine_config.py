"""EngineConfig: the engine's knobs (batching, KV cache, priorities, how the model spreads over ranks)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.kv_cache import KVCacheSpec
from engine.parallel.group import ParallelConfig

QUANTIZATIONS = (None, "int8")


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_bytes: int | None = None  # None: 85% of free memory on GPU; CPU: engine.kv_cache.KVCacheSpec
    num_kv_blocks: int | None = None  # overrides kv_cache_bytes
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    # Priorities >= background_priority are background work (e.g. batch jobs): their prompts get at
    # most background_prefill_tokens per step, so a step never grows long under a burst of them.
    background_priority: int | None = None
    background_prefill_tokens: int = 256
    # Ranks the model is split over (engine.parallel), and whether experts split by expert (EP)
    # rather than by width.
    tensor_parallel_size: int = 1
    expert_parallel: bool = False
    # Decode steps of a few sequences as one compiled graph where the model and device allow it
    # (engine.decode_graph: CPU, one rank). None: $BAILING_COMPILE ("0" off, "1" on), else on.
    compile_decode: bool | None = None
    # Weights held quantized (engine.int8): None, or "int8" (weight-only, per-row scales; one rank).
    quantization: str | None = None

    @property
    def wants_compiled_decode(self) -> bool:
        if self.compile_decode is not None:
            return self.compile_decode
        return os.environ.get("BAILING_COMPILE", "1").strip().lower() not in ("0", "false", "no", "off")

    def __post_init__(self) -> None:
        self.parallel  # noqa: B018 - validates the parallel fields
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.quantization is not None and self.tensor_parallel_size > 1:
            raise ValueError("int8 quantization runs on one rank for now (tensor_parallel_size=1)")

    @property
    def kv_spec(self) -> KVCacheSpec:
        return KVCacheSpec(self.block_size, self.kv_cache_bytes, self.num_kv_blocks, self.max_model_len)

    @property
    def parallel(self) -> ParallelConfig:
        return ParallelConfig(self.tensor_parallel_size, self.expert_parallel)
