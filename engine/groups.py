"""Requests as groups of samples: building a request's n tracked samples, and forking samples 1..n-1
from sample 0 once its prompt is computed (shared full KV blocks, copied partial block).

Flow: `LLMEngine.add_request` -> `new_group` (one `TrackedRequest` per sample: sequence, output,
sampler state, detokenizer) -> sample 0 is scheduled -> after the step that computed its prompt,
`fork_samples` starts the others from its KV -> they sample their first token from the same logits.
"""

from __future__ import annotations

from typing import Any, Protocol

from engine.block_manager import BlockManager
from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import RequestOutput
from engine.sampler import SamplingState, make_generator
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import RequestGroup, Sequence, Status, TrackedRequest


def stop_strings(params: SamplingParams, family_defaults: tuple[str, ...]) -> list[str]:
    """The request's stop strings, plus the family's (e.g. a spelled-out end-of-turn) unless ignore_eos."""
    defaults = [] if params.ignore_eos else [s for s in family_defaults if s not in params.stop]
    return [*params.stop, *defaults]


def new_group(
    rid: str,
    prompt: str | list[int],
    ids: list[int],
    params: SamplingParams,
    priority: int,
    output_queue: Any,
    tokenizer: Any,
    eos_and_stops: tuple[frozenset[int], tuple[str, ...]],
) -> RequestGroup:
    """The request's n samples: sample 0 as given, the others with `params.for_sample(i)`."""
    members = []
    for i in range(params.n):
        seq = Sequence(rid, ids, params if i == 0 else params.for_sample(i), priority, index=i)
        if i:
            seq.status = Status.PENDING  # forked from sample 0 once the prompt is computed
        members.append(_track_sample(seq, prompt, tokenizer, *eos_and_stops))
    members[0].seq.pending_forks = params.n - 1
    group = RequestGroup(rid, members, output_queue)
    for member in members:
        member.group = group
    return group


def _track_sample(
    seq: Sequence, prompt: str | list[int], tokenizer: Any, eos_ids: frozenset[int], stops: tuple[str, ...]
) -> TrackedRequest:
    ids, params = seq.prompt_token_ids, seq.params
    out = RequestOutput(seq.request_id, prompt if isinstance(prompt, str) else None, list(ids))
    out.index = seq.index
    out.metrics.prompt_tokens = len(ids)
    state = SamplingState(
        params, make_generator(params.seed), seq.prompt_token_ids, seq.output_token_ids, eos_ids
    )
    req = TrackedRequest(seq, out, state, frozenset() if params.ignore_eos else eos_ids)
    if tokenizer is not None:
        req.detok = IncrementalDetokenizer(tokenizer, ids, params.skip_special_tokens)
        req.stops = stop_strings(params, stops)
    return req


class BlockCopier(Protocol):
    """The model runner: copies KV blocks on every rank that holds part of the cache."""

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None: ...


def fork_samples(
    parent: TrackedRequest, blocks: BlockManager, scheduler: Scheduler, cache: BlockCopier
) -> list[TrackedRequest]:
    """Start the other samples of parent's request from its computed prompt; returns those started.

    They share its full prompt blocks and get a copy of the partial last one, so the prompt's KV
    exists once. A sample that finds no free block for its copy waits and prefills on its own
    (the prefix cache still gives it the full blocks).
    """
    seq, copies, forked = parent.seq, [], []
    seq.pending_forks = 0
    for child in parent.group.members[1:]:
        pairs = blocks.fork(seq.seq_id, child.seq.seq_id, seq.num_computed)
        if pairs is None:
            scheduler.add(child.seq)
            continue
        copies += pairs
        child.seq.num_computed, child.seq.num_cached = seq.num_computed, seq.num_cached
        scheduler.add_running(child.seq)
        forked.append(child)
    cache.copy_blocks(copies)
    return forked
