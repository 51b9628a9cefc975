"""The generation loop: prefill all prompts together, then decode every live sequence each step.

Flow per step: pack each live sequence's new tokens along T -> model forward with a BatchKVContext
-> logits at each sequence's last position -> sampler -> per-sequence stop checks (eos, stop token
ids, stop strings, max_tokens, context length) -> finished sequences leave the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.config import ModelRuntimeConfig
from engine.detokenizer import IncrementalDetokenizer, find_stop
from engine.layers.attention import BatchKVContext, SequenceKVCache
from engine.model_base import CausalLM
from engine.outputs import RequestOutput
from engine.sampler import make_generator, sample
from engine.sampling_params import SamplingParams


@dataclass
class Sequence:
    out: RequestOutput
    params: SamplingParams
    cache: SequenceKVCache
    generator: torch.Generator
    detok: IncrementalDetokenizer | None
    stops: list[str]
    eos: set[int]
    pending: list[int] = field(default_factory=list)  # tokens to feed at the next forward
    start: float = field(default_factory=time.perf_counter)

    @property
    def position(self) -> int:
        return self.cache.length


def _stop_strings(params: SamplingParams, model: CausalLM) -> list[str]:
    defaults = [] if params.ignore_eos else list(model.default_stop_strings)
    return list(params.stop) + [s for s in defaults if s not in params.stop]  # type: ignore[operator]


def new_sequence(
    model: CausalLM,
    out: RequestOutput,
    params: SamplingParams,
    tokenizer: Any,
    eos: set[int],
    dtype: torch.dtype,
    device: torch.device,
) -> Sequence:
    rt: ModelRuntimeConfig = model.runtime
    capacity = min(len(out.prompt_token_ids) + params.max_tokens, rt.max_position)
    cache = SequenceKVCache(rt.num_layers, rt.num_kv_heads, rt.head_dim, capacity, dtype, device)
    detok = (
        None
        if tokenizer is None
        else IncrementalDetokenizer(tokenizer, out.prompt_token_ids, params.skip_special_tokens)
    )
    return Sequence(
        out,
        params,
        cache,
        make_generator(params.seed),
        detok,
        _stop_strings(params, model) if detok else [],
        eos,
        pending=list(out.prompt_token_ids),
    )


@torch.inference_mode()
def run(model: CausalLM, seqs: list[Sequence], device: torch.device) -> None:
    """Drive `seqs` to completion (each `.out` is filled in place)."""
    live = list(seqs)
    while live:
        ids = torch.tensor([t for s in live for t in s.pending], dtype=torch.long, device=device)  # (T,)
        positions = torch.cat([torch.arange(s.position, s.position + len(s.pending)) for s in live]).to(
            device
        )
        ctx = BatchKVContext([s.cache for s in live], [len(s.pending) for s in live])
        hidden = model(ids, positions, ctx)  # (T, d)
        ctx.advance()
        last = torch.tensor([len(s.pending) for s in live], device=device).cumsum(0) - 1  # (B,)
        logits = model.compute_logits(hidden[last])  # (B, V)
        tokens = sample(logits, [s.params for s in live], [s.generator for s in live])
        for s, tok in zip(live, tokens, strict=True):
            _append(s, tok)
        live = [s for s in live if not s.out.finished]


def _append(s: Sequence, tok: int) -> None:
    out, p = s.out, s.params
    now = time.perf_counter()
    if not out.token_ids:
        out.metrics.time_to_first_token_s = now - s.start
    out.token_ids.append(tok)
    s.pending = [tok]
    n = len(out.token_ids)
    if n > p.min_tokens and (tok in p.stop_token_ids or (not p.ignore_eos and tok in s.eos)):
        out.finish_reason, out.stop_reason = "stop", tok
    if s.detok is not None and out.finish_reason is None:  # a stop/eos token adds no text
        _append_text(s, tok, check_stops=n > p.min_tokens)
    if out.finish_reason is None and (n >= p.max_tokens or s.position + 1 >= s.cache.capacity):
        out.finish_reason = "length"
    if out.finish_reason:
        out.metrics.completion_tokens = n
        out.metrics.total_time_s = now - s.start


def _append_text(s: Sequence, tok: int, check_stops: bool) -> None:
    delta = s.detok.push(tok)  # type: ignore[union-attr]
    if not delta:
        return
    out = s.out
    out.text += delta
    if check_stops and s.stops and out.finish_reason is None:
        hit = find_stop(out.text, len(delta), s.stops)
        if hit is not None:
            out.text = out.text[: hit[0]]
            out.finish_reason, out.stop_reason = "stop", hit[1]
