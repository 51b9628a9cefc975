"""Sequence: the engine's state for one request, from admission to finish.

Token accounting: `token_ids` = prompt + generated so far; `num_computed` of them have their KV in the
cache. A step schedules `n` of the uncomputed tokens; after it, when num_computed == len(token_ids),
the sequence samples its next token. Preemption (recompute) sets num_computed back to 0. A
prefill-only sequence (`hidden`, engine.hidden_states) samples nothing: it ends once its prompt is computed.

A request sampled n times is a `RequestGroup` of n sequences. Only sample 0 is scheduled at first
(`pending_forks` = n - 1); when its prompt is computed the engine forks the others from it: they
share its full prompt blocks, copy the partial last one and sample their first token from the same
logits. `seq_id` names a sequence in the scheduler and the block pool (the request id for sample 0,
`request_id#i` for sample i).
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Hashable
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from typing import Any

from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

_arrivals = itertools.count()


class Status(enum.Enum):
    PENDING = "pending"  # a sample not yet forked from sample 0 (in no scheduler queue)
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0  # lower runs first (vLLM convention); FCFS within a priority
    index: int = 0  # which of the request's n samples
    pending_forks: int = 0  # samples still to fork from this one once its prompt is computed
    arrival: int = field(default_factory=lambda: next(_arrivals))
    arrival_time: float = field(default_factory=time.monotonic)
    status: Status = Status.WAITING
    num_computed: int = 0
    num_cached: int = 0  # prompt tokens whose KV the prefix cache supplied at the latest admission
    num_preemptions: int = 0
    seq_id: str = field(init=False)
    token_ids: list[int] = field(init=False)
    output_token_ids: list[int] = field(default_factory=list)
    diffusion: Any = None  # engine.diffusion.run.DiffusionRun of a block-diffusion request
    media: Any = None  # engine.multimodal.MediaState of a prompt with media (images, audio, video)
    hidden: Any = None  # engine.hidden_states.HiddenCapture of a prefill-only request
    # Computed in forwards of its own, in fixed chunks, without prefix-cache reuse: its rows are
    # bit-identical whatever runs beside it (prefill-only requests that must be reproducible).
    isolated: bool = False

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)
        self.seq_id = sample_id(self.request_id, self.index)

    @property
    def width(self) -> int:
        """Running slots this sequence will take: itself plus the samples it still has to fork."""
        return 1 + self.pending_forks

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def block_tokens(self) -> SequenceOf[Hashable]:
        """The tokens as the prefix cache keys them (media placeholders carry their media digest)."""
        return self.token_ids if self.media is None else self.media.keyed(self.token_ids)

    @property
    def compute_from(self) -> int:
        """The first position whose KV admission must compute, not take from the prefix cache: the last
        token (its logits sample the next one), or a prefill-only request's first hidden position (its
        row exists only in the forward that computes it)."""
        last = len(self.token_ids) - 1
        if self.isolated:
            return 0  # a cache hit would change how its KV was computed
        return last if self.hidden is None else min(last, self.hidden.first)

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def order(self) -> tuple[int, int]:
        """Scheduling order: priority, then arrival."""
        return (self.priority, self.arrival)

    def append(self, token: int) -> None:
        self.token_ids.append(token)
        self.output_token_ids.append(token)


@dataclass(eq=False)
class TrackedRequest:
    """What the engine keeps per request besides scheduling state: output, detokenizer, sampler state."""

    seq: Sequence
    output: RequestOutput
    sampling: Any  # engine.sampler.SamplingState
    eos: frozenset[int]
    detok: Any = None  # engine.detokenizer.IncrementalDetokenizer, None without a tokenizer
    stops: list[str] = field(default_factory=list)
    last_token_time: float | None = None
    emitted_chars: int = 0  # of output.text, the prefix already handed out as new_text
    group: RequestGroup | None = None


def sample_id(request_id: str, index: int) -> str:
    return request_id if index == 0 else f"{request_id}#{index}"


@dataclass(eq=False)
class RequestGroup:
    """One request: its n samples (index order), where its outputs go, and how many are done."""

    request_id: str
    members: list[TrackedRequest]
    queue: Any = None  # receives every output snapshot of the request (OutputQueue), or None
    num_finished: int = 0
    final_only: bool = False  # the queue gets (and a step returns) only the final output

    @property
    def finished(self) -> bool:
        return self.num_finished == len(self.members)
