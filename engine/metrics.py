"""Engine metrics: per-step gauges (running, waiting, KV usage, batch size) and latency statistics.

Updated by the engine under its lock; `snapshot()` returns a plain dict for logs, Prometheus
exporters and tests.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.block_manager import BlockManager
from engine.outputs import RequestOutput
from engine.scheduler import Scheduler, SchedulerOutput

_WINDOW = 1024


def _mean(values: deque[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass
class EngineMetrics:
    steps: int = 0
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    last_batch_tokens: int = 0
    last_batch_seqs: int = 0
    max_batch_seqs: int = 0  # the largest batch (sequences in one step) seen so far
    prompt_tokens: int = 0  # prompt tokens run through the model (cache hits not; recompute again)
    generation_tokens: int = 0
    finished_requests: int = 0
    num_preemptions: int = 0
    prefix_cache_hit_tokens: int = 0
    prefix_cache_query_tokens: int = 0
    shared_kv_blocks: int = 0  # blocks referenced by more than one sequence now
    peak_shared_kv_blocks: int = 0
    forked_samples: int = 0  # samples of n > 1 requests started from sample 0's prompt KV
    held_decodes: int = 0  # decodes that sat out a step for a better-priority prefill
    ttft_s: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    itl_s: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    step_s: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))

    def record_step(
        self, sched: SchedulerOutput, sampled: int, seconds: float, scheduler: Scheduler, blocks: BlockManager
    ) -> None:
        self.steps += 1
        self.last_batch_tokens, self.last_batch_seqs = sched.num_tokens, len(sched.scheduled)
        self.max_batch_seqs = max(self.max_batch_seqs, self.last_batch_seqs)
        for seq, n in sched.scheduled:  # called after the step: seq.num_computed already includes n
            prompt_len = len(seq.prompt_token_ids)
            self.prompt_tokens += max(0, min(seq.num_computed, prompt_len) - (seq.num_computed - n))
        self.generation_tokens += sampled
        self.held_decodes += sched.held
        self.num_running, self.num_waiting = len(scheduler.running), scheduler.num_waiting
        self.num_preemptions = scheduler.num_preemptions
        stats = blocks.stats()
        self.kv_usage = blocks.usage()
        self.prefix_cache_hit_tokens, self.prefix_cache_query_tokens = stats.prefix_hits, stats.prefix_queries
        self.shared_kv_blocks = stats.shared
        self.peak_shared_kv_blocks = max(self.peak_shared_kv_blocks, stats.shared)
        self.step_s.append(seconds)

    def record_finished(self, samples: list[RequestOutput]) -> None:
        """A request ended normally; `samples` are the outputs of its n samples."""
        self.finished_requests += 1
        first = [o.metrics.time_to_first_token_s for o in samples if o.token_ids]
        if first:
            self.ttft_s.append(min(first))
        for out in samples:
            self.itl_s.extend(out.metrics.inter_token_latencies_s)

    def snapshot(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "num_running": self.num_running,
            "num_waiting": self.num_waiting,
            "kv_usage": self.kv_usage,
            "batch_tokens": self.last_batch_tokens,
            "batch_seqs": self.last_batch_seqs,
            "max_batch_seqs": self.max_batch_seqs,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "finished_requests": self.finished_requests,
            "num_preemptions": self.num_preemptions,
            "prefix_cache_hit_tokens": self.prefix_cache_hit_tokens,
            "prefix_cache_query_tokens": self.prefix_cache_query_tokens,
            "shared_kv_blocks": self.shared_kv_blocks,
            "peak_shared_kv_blocks": self.peak_shared_kv_blocks,
            "forked_samples": self.forked_samples,
            "held_decodes": self.held_decodes,
            "mean_ttft_s": _mean(self.ttft_s),
            "mean_itl_s": _mean(self.itl_s),
            "mean_step_s": _mean(self.step_s),
        }
