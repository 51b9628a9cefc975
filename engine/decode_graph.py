"""Decode steps of a few sequences as one compiled graph (torch.compile / inductor), on CPU.

Why: eager, a batch-1 decode step of the bench model is ~110 small matmuls and ~1,000 other ops; the
matmuls read their weights at 7-15 GB/s and each op costs microseconds of dispatch, so the step
took ~25 ms against a 3.6 ms bandwidth floor (bench/RESULTS.md, issue 19). Compiled, the few-row
products take their reduction form (engine.layers.matvec), the MoE its gathered form (only the K
experts each token hit, `FusedExperts.forward_gathered`), and inductor fuses the norms, rotary,
routing and SwiGLU around them into a few dozen C++ loops.

What is compiled: the model's forward and its vocab projection, for a step in which every sequence
decodes one token (R rows, all sampled, R <= FEW_ROWS), text only, one rank, CPU, no FP8-kept
weights. Every other step runs eager, unchanged.

Attention stays outside the graph: the paged KV cache, the block tables and the context lengths
change every step. The graph calls it through an opaque op (`bailing::paged_attend`) that finds the
step's `PagedContext` in a slot the runner fills just before the call. The op declares no mutation:
the KV cache it writes is no tensor of the graph, each layer's op runs once per step, and the hidden
state flowing through it orders the layers. So the graph's shapes depend on R alone: one graph for
R = 1 and one, with R dynamic, for 2..FEW_ROWS (each tens of seconds to compile the first time, then
read from inductor's on-disk cache by later processes).

Compiling happens in a background thread as soon as the engine starts (`start_warm_up`): it runs
both graphs once on a scratch one-block KV cache, and until they are ready decode steps run eager, so
no request waits for the compiler. If compiling fails (no C++ compiler, an unsupported op), the
engine logs it once and stays eager.
"""

from __future__ import annotations

import itertools
import logging
import threading
import types
from typing import Any

import torch

from engine.config import ModelRuntimeConfig
from engine.kv_cache import PagedContext, PagedKVCache
from engine.layers.matvec import FEW_ROWS
from engine.model_base import CausalLM

log = logging.getLogger(__name__)

_STEP_CONTEXTS: dict[int, PagedContext] = {}  # slot -> the context of the step running in it
_SLOTS = itertools.count()


@torch.library.custom_op("bailing::paged_attend", mutates_args=())
def paged_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot: int, layer: int) -> torch.Tensor:
    """q [R, H, D], k/v [R, Hkv, D] -> [R, H, D] through the PagedContext in `slot` (eager)."""
    return _STEP_CONTEXTS[slot].attend(layer, q, k, v).contiguous()  # the fake's layout


@paged_attend.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot: int, layer: int) -> torch.Tensor:
    return torch.empty_like(q)


class SlotContext:
    """What the traced model sees as its attention context: `attend` calls the opaque op."""

    def __init__(self, slot: int) -> None:
        self.slot = slot

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return paged_attend(q, k, v, self.slot, layer)


def supports(model: CausalLM, device: torch.device, group_size: int) -> bool:
    """Whether this model's decode steps can run compiled here."""
    if device.type != "cpu" or group_size != 1 or not model.compiled_decode or model.diffusion:
        return False
    return all(getattr(m, "fp8_block", None) is None for m in model.modules())


class DecodeGraph:
    """The compiled decode step of one model; `takes(step)` says which steps it runs."""

    def __init__(self, model: CausalLM) -> None:
        self.model = model
        self.slot = next(_SLOTS)
        self.context = SlotContext(self.slot)
        self.failed = False
        self.steps = 0  # steps run through the graph
        self.ready = threading.Event()  # set once both graphs are compiled (or compiling failed)
        self._compiled = torch.compile(_own_step(model), dynamic=False, fullgraph=True)

    @classmethod
    def start(
        cls, model: CausalLM, device: torch.device, dtype: torch.dtype, group_size: int, config: Any
    ) -> DecodeGraph | None:
        """The engine's graph, warming up in the background, if its config wants one and this model
        and device support it (`config`: an EngineConfig)."""
        if not (config.wants_compiled_decode and supports(model, device, group_size)):
            return None
        graph = cls(model)
        graph.start_warm_up(model.runtime, dtype)
        return graph

    def start_warm_up(self, rt: ModelRuntimeConfig, dtype: torch.dtype) -> threading.Thread:
        """Compile both graphs in a daemon thread; decode steps run eager until `ready`."""
        thread = threading.Thread(target=self.warm_up, args=(rt, dtype), name="decode-graph", daemon=True)
        thread.start()
        return thread

    @torch.inference_mode()
    def warm_up(self, rt: ModelRuntimeConfig, dtype: torch.dtype) -> None:
        """Run the graph for 1 row and for 2 rows on a scratch one-block cache (compiling both)."""
        try:
            scratch = PagedKVCache(rt.num_layers, 1, FEW_ROWS, rt.num_kv_heads, rt.head_dim, dtype, "cpu")
            for r in (1, 2):
                ctx = PagedContext(scratch, torch.arange(r), [1] * r, [1] * r, [[0]] * r)
                ids = torch.zeros(r, dtype=torch.long)
                if self(ids, ids.clone(), ctx) is None:
                    return
            log.info("decode graph compiled")
        finally:
            self.ready.set()

    def takes(self, step: Any) -> bool:
        """A step of R <= FEW_ROWS text sequences that each decode (and sample) one token."""
        r = len(step.q_lens)
        return (
            self.ready.is_set()
            and not self.failed
            and 0 < r <= FEW_ROWS
            and step.ids.shape[0] == r
            and step.positions.dim() == 1
            and not step.extra
            and step.block_lengths is None
            and step.rows is not None
            and step.rows.shape[0] == r
        )

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, ctx: PagedContext) -> Any:
        """hidden [R, d] and logits [R, V] of the step, or None if the graph cannot be compiled."""
        if ids.shape[0] > 1:  # one graph for 2..FEW_ROWS rows (a size of 1 is always its own)
            torch._dynamo.mark_dynamic(ids, 0, min=2, max=FEW_ROWS)
            torch._dynamo.mark_dynamic(positions, 0, min=2, max=FEW_ROWS)
        _STEP_CONTEXTS[self.slot] = ctx
        try:
            out = self._compiled(ids, positions, self.context)
            self.steps += 1
            return out
        except Exception:
            if torch.compiler.is_compiling():
                raise
            log.exception("compiling the decode step failed; decode steps stay eager")
            self.failed = True
            return None
        finally:
            _STEP_CONTEXTS.pop(self.slot, None)


def _own_step(model: CausalLM) -> types.FunctionType:
    """The step function of one model, with a code object of its own: dynamo keeps compiled graphs
    (and their cache limit) per code object, so graphs of different engines in one process would
    otherwise share one cache, and it would outlive them."""

    def decode_step(ids: torch.Tensor, positions: torch.Tensor, ctx: SlotContext) -> Any:
        hidden = model(ids, positions, ctx)  # (R, d)
        return hidden, model.compute_logits(hidden)  # (R, V)

    code = decode_step.__code__.replace()  # a copy
    return types.FunctionType(code, decode_step.__globals__, "decode_step", None, decode_step.__closure__)
