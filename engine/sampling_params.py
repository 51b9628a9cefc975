"""SamplingParams: what a request asks of the sampler and the stop logic (validated on creation).

Flow: a caller (CLI, gateway) builds SamplingParams -> `__post_init__` normalises and validates it,
raising `RequestError` that names the offending field and its allowed range -> the engine reads it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import RequestError

MAX_LOGPROBS = 20  # the most top logprobs a request may ask for (besides the sampled token)
PENALTY_LIMIT = 2.0  # presence/frequency penalties live in [-PENALTY_LIMIT, PENALTY_LIMIT]


class LogitsProcessor(Protocol):
    """Changes one request's next-token logits: (output ids so far, logits [V]) -> logits [V].

    Called on the engine thread before every sampled token, in list order, on the raw model logits
    (penalties, min_tokens and temperature come after). It may modify the row in place. A processor
    with state per sample defines `clone()`: a request sampled n times gets clones for samples 1..n-1
    (made before any token exists); one without `clone` is shared by all n samples.
    """

    def __call__(self, output_token_ids: list[int], logits: Any) -> Any: ...


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    """'>= 0', '> 0' or 'in (0, 1]': the allowed range as the error messages say it."""
    if math.isinf(hi):
        return f"{'>' if lo_open else '>='} {_fmt(lo)}"
    return f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"


def _number(name: str, value: object, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> float:
    """A finite real in the interval, as a float; otherwise a RequestError naming `name` and the range."""
    allowed = _interval(lo, hi, lo_open, hi_open=False)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RequestError(f"{name} must be a number {allowed}, got {value!r}")
    x = float(value)
    if not (math.isfinite(x) and (lo < x if lo_open else lo <= x) and x <= hi):
        raise RequestError(f"{name} must be {allowed}, got {value!r}")
    return x


def _integer(name: str, value: object, lo: int, hi: float = math.inf, note: str = "") -> int:
    """An int (bools rejected) in [lo, hi]; otherwise a RequestError naming `name` and the range."""
    allowed = _interval(lo, hi, lo_open=False, hi_open=False) + note
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestError(f"{name} must be an integer {allowed}, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {value!r}")
    return value


@dataclass
class SamplingParams:
    """vLLM-style sampling parameters; temperature 0 means greedy.

    top_k 0 or -1 and top_p 1 and min_p 0 switch those filters off; repetition_penalty 1 and
    presence/frequency penalties 0 switch penalties off; logprobs None returns no logprobs.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k (normalised to 0)
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    repetition_penalty: float = 1.0  # > 0; on prompt + output tokens (CTRL rule)
    presence_penalty: float = 0.0  # [-2, 2]; on output tokens (OpenAI rule)
    frequency_penalty: float = 0.0  # [-2, 2]; on output tokens (OpenAI rule)
    logprobs: int | None = None  # 0..20 top logprobs besides the sampled token; None = none
    n: int = 1  # samples drawn for the prompt; they share its KV blocks (prefilled once)
    logits_processors: list[LogitsProcessor] = field(default_factory=list)  # server-side hooks
    # Block-diffusion decoding (engine.diffusion.DiffusionParams) for a diffusion model; None: its
    # defaults there. max_tokens is the generation length.
    diffusion: Any = None
    # The grammar the output must follow (engine.structured.GrammarConstraint from the engine's
    # `structured`); applied after the logits processors. Other samples of the request get clones.
    constraint: Any = None

    def __post_init__(self) -> None:
        self.n = _integer("n", self.n, 1)
        self.max_tokens = _integer("max_tokens", self.max_tokens, 1)
        self.temperature = _number("temperature", self.temperature, 0.0)
        self.top_p = _number("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        if self.top_k == -1:
            self.top_k = 0
        self.top_k = _integer("top_k", self.top_k, 0, note=" (or -1 for no top-k)")
        self.min_p = _number("min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None:
            self.seed = _integer("seed", self.seed, -(2**63), 2**64 - 1)
        self.ignore_eos = _flag("ignore_eos", self.ignore_eos)
        self.skip_special_tokens = _flag("skip_special_tokens", self.skip_special_tokens)
        self.min_tokens = _integer("min_tokens", self.min_tokens, 0)
        if self.min_tokens > self.max_tokens:
            raise RequestError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        self.repetition_penalty = _number("repetition_penalty", self.repetition_penalty, 0.0, lo_open=True)
        lim = PENALTY_LIMIT
        self.presence_penalty = _number("presence_penalty", self.presence_penalty, -lim, lim)
        self.frequency_penalty = _number("frequency_penalty", self.frequency_penalty, -lim, lim)
        if self.logprobs is not None:
            self.logprobs = _integer("logprobs", self.logprobs, 0, MAX_LOGPROBS, note=" (or None)")
        self._normalise_stops()
        procs = self.logits_processors
        if not isinstance(procs, (list, tuple)) or not all(callable(p) for p in procs):
            raise RequestError(f"logits_processors must be a list of callables, got {procs!r}")
        self.logits_processors = list(procs)
        if self.diffusion is not None:
            from engine.diffusion.params import DiffusionParams

            if not isinstance(self.diffusion, DiffusionParams):
                raise RequestError(f"diffusion must be a DiffusionParams or None, got {self.diffusion!r}")
        if self.constraint is not None:
            from engine.structured.constraint import GrammarConstraint

            if not isinstance(self.constraint, GrammarConstraint):
                raise RequestError(f"constraint must be a GrammarConstraint or None, got {self.constraint!r}")

    def for_sample(self, index: int) -> SamplingParams:
        """The params of sample `index` (> 0) of an n-sample request: n=1, its own seed and processors.

        A seeded request gives sample i the seed `seed + i` (wrapping within 64 bits), so every
        sample is reproducible and they differ from each other.
        """
        seed = self.seed
        if seed is not None:
            seed = seed + index if seed + index < 2**64 else seed + index - 2**64
        procs: list[Callable[..., Any]] = [
            p.clone() if callable(getattr(p, "clone", None)) else p for p in self.logits_processors
        ]
        constraint = None if self.constraint is None else self.constraint.clone()
        return dataclasses.replace(self, n=1, seed=seed, logits_processors=procs, constraint=constraint)

    def _normalise_stops(self) -> None:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is not None and not isinstance(stop, (list, tuple)):
            raise RequestError(f"stop must be a string or a list of strings, got {stop!r}")
        self.stop = list(stop or [])
        if not all(isinstance(s, str) and s for s in self.stop):
            raise RequestError(f"stop strings must be non-empty strings, got {self.stop!r}")
        ids = self.stop_token_ids
        if ids is not None and not isinstance(ids, (list, tuple, set, frozenset)):
            raise RequestError(f"stop_token_ids must be a list of integers >= 0, got {ids!r}")
        self.stop_token_ids = list(ids or [])
        bad = [t for t in self.stop_token_ids if isinstance(t, bool) or not isinstance(t, int) or t < 0]
        if bad:
            raise RequestError(f"stop_token_ids must be integers >= 0, got {bad!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        """Whether any of repetition/presence/frequency penalty changes the logits."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
