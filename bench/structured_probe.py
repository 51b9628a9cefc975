"""What bench/structured.py measures besides throughput: the grammars it runs, the constrained path's
time split per step (timing wrappers installed on one engine for one run), and llguidance's mask fill
alone on the bench tokenizer (a micro-benchmark, no model).

Flow: `StepProfile(llm)` wraps the step, the forward (`runner.execute`), the sampler, the
prefetcher's `apply` / `masks` / `prefetch`, the bitmask-to-bias lookup (`BiasTable.bias`),
llguidance's batched fill (split by the thread it ran on) and `GrammarConstraint.advance`;
`with profile:` puts them in and takes them out again.
The wrappers only time and forward: no engine file changes.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from llguidance import LLMatcher
from llguidance.torch import fill_next_token_bitmask

import engine.step_outputs as step_outputs_module
import engine.structured.masks as masks_module
from engine.structured.constraint import GrammarConstraint
from pipelines.structured import JSON_STYLE

# A nested schema with the usual kinds of fields; every string and array is bounded so a sample ends.
JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 99999},
        "role": {"enum": ["admin", "editor", "viewer", "guest"]},
        "active": {"type": "boolean"},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["id", "role", "active", "rating", "tags", "address"],
    "additionalProperties": False,
}
LETTERS = "[a-z ]"  # the fixed-length grammar's alphabet


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of the HF tokenizer decodes to."""
    return max(len(tokenizer.decode([i])) for i in range(len(tokenizer)))


def fixed_length_grammar(max_tokens: int, token_chars: int) -> str:
    """`[a-z ]{N}` with N past what max_tokens tokens can write: it cannot complete before max_tokens,
    so eos is never allowed and every constrained sample generates exactly max_tokens tokens."""
    return LLMatcher.grammar_from_regex(f"{LETTERS}{{{max_tokens * token_chars + 1}}}")


def json_grammar() -> str:
    """JSON_SCHEMA in the separators the pipelines use (pipelines.structured.JSON_STYLE)."""
    return LLMatcher.grammar_from_json_schema(JSON_SCHEMA, overrides=JSON_STYLE)


class StepProfile:
    """Seconds and calls of each piece of a step on one engine, for the runs inside `with`."""

    def __init__(self, llm: Any) -> None:
        self.engine = llm.engine
        self.prefetcher = llm.engine.structured.get().masks
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.rows: dict[str, int] = defaultdict(int)  # masks filled by llguidance, per thread kind
        self._undo: list[Callable[[], None]] = []

    def _timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

        return wrapper

    def _fill(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """llguidance's batched fill, booked as "fill_side" (prefetch thread) or "fill_sync" (sampler)."""

        def wrapper(executor: Any, matchers: list, bitmask: torch.Tensor) -> Any:
            side = threading.current_thread().name.startswith("grammar-masks")
            name = "fill_side" if side else "fill_sync"
            t0 = time.perf_counter()
            try:
                return fn(executor, matchers, bitmask)
            finally:
                self.seconds[name] += time.perf_counter() - t0  # float += under the GIL: one thread each
                self.calls[name] += 1
                self.rows[name] += len(matchers)

        return wrapper

    def _patch(self, owner: Any, attr: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        had_own = isinstance(owner, type) or attr in vars(owner)
        original = getattr(owner, attr)
        setattr(owner, attr, make(original))
        if had_own:
            self._undo.append(lambda: setattr(owner, attr, original))
        else:  # a bound method seen through the instance: drop the instance attribute again
            self._undo.append(lambda: delattr(owner, attr))

    def __enter__(self) -> StepProfile:
        timed = self._timed
        self._patch(self.engine, "step", lambda f: timed("step", f))
        self._patch(self.engine.runner, "execute", lambda f: timed("forward", f))
        self._patch(step_outputs_module, "sample", lambda f: timed("sampler", f))
        self._patch(self.prefetcher, "apply", lambda f: timed("apply", f))
        self._patch(self.prefetcher, "masks", lambda f: timed("masks", f))
        self._patch(self.prefetcher, "prefetch", lambda f: timed("prefetch_submit", f))
        self._patch(masks_module.BiasTable, "bias", lambda f: timed("bias", f))
        self._patch(masks_module, "fill_next_token_bitmask_par", self._fill)
        self._patch(GrammarConstraint, "advance", lambda f: timed("advance", f))
        return self

    def __exit__(self, *exc: object) -> None:
        while self._undo:
            self._undo.pop()()

    def summary(self, tokens: int) -> dict[str, Any]:
        """Per step and per generated token (µs) of every piece; the forward-free rest of a step."""
        steps = max(self.calls["step"], 1)
        out: dict[str, Any] = {"steps": self.calls["step"], "tokens": tokens}
        for name, s in self.seconds.items():
            out[f"{name}_ms_per_step"] = 1e3 * s / steps
            out[f"{name}_us_per_token"] = 1e6 * s / max(tokens, 1)
        for name, n in self.rows.items():
            out[f"{name}_masks"] = n
            out[f"{name}_us_per_mask"] = 1e6 * self.seconds[name] / max(n, 1)
        rest = (
            self.seconds["step"] - self.seconds["forward"] - self.seconds["sampler"] - self.seconds["apply"]
        )
        out["other_ms_per_step"] = 1e3 * rest / steps  # scheduling, bookkeeping, advance, prefetch submit
        return out


def mask_fill_micro(tokenizer: Any, grammar: str, masks: int, seed: int) -> dict[str, float]:
    """µs per mask of one matcher filling its masks on this thread (llguidance alone): walk the
    grammar with random allowed tokens, restarting when it completes; also µs to build a matcher."""
    rng = random.Random(seed)
    bitmask = torch.empty(1, (tokenizer.vocab_size + 31) // 32, dtype=torch.int32)  # (1, W)
    t0 = time.perf_counter()
    matcher = LLMatcher(tokenizer, grammar, log_level=0)
    build_us = 1e6 * (time.perf_counter() - t0)
    fills = []
    for _ in range(masks):
        if matcher.is_stopped():
            matcher.reset()
        t0 = time.perf_counter()
        fill_next_token_bitmask(matcher, bitmask, 0)
        fills.append(1e6 * (time.perf_counter() - t0))
        allowed = unpack(bitmask, tokenizer.vocab_size)[0].nonzero().flatten().tolist()
        matcher.consume_token(rng.choice(allowed))
    fills.sort()
    return {
        "build_us": build_us,
        "mean_us": statistics.fmean(fills),
        "p50_us": fills[len(fills) // 2],
        "p90_us": fills[int(0.9 * len(fills))],
    }


def unpack(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask (R, W) int32 -> (R, vocab_size) bool: bit j of word w = token 32 w + j allowed."""
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1  # (R, W, 32)
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def torch_ops_micro(rows: int, vocab: int, repeats: int = 50) -> dict[str, float]:
    """µs of `apply`'s torch part for `rows` constrained rows: the engine's byte-table bias add
    (`BiasTable.bias` + add), against the first version's unpack to bool + clone + masked_fill."""
    gen = torch.Generator().manual_seed(0)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (rows, (vocab + 31) // 32), generator=gen, dtype=torch.int32)
    logits = torch.randn(rows, vocab, generator=gen)  # (R, V)
    idx = torch.arange(rows)  # (R,)
    table = masks_module.BiasTable()

    def unpacked() -> torch.Tensor:
        return unpack(bitmask, vocab)

    allowed = unpacked()

    def fill() -> torch.Tensor:
        out = logits.clone()
        out[idx] = out[idx].masked_fill(~allowed, float("-inf"))
        return out

    def bias_add() -> torch.Tensor:
        return logits + table.bias(bitmask, vocab, logits)

    def best(fn: Callable[[], Any]) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e6 * statistics.median(times)

    if not torch.equal(bias_add(), fill()):
        raise AssertionError("the bias add disagrees with unpack + masked_fill")
    return {
        "unpack_us": best(unpacked),
        "clone_fill_us": best(fill),
        "bias_add_us": best(bias_add),
    }
