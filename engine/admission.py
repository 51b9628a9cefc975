"""What a request must satisfy before it enters the engine: token ids in range and a context it fits,
its block-diffusion settings resolved (mask id from the tokenizer or config.json), and a KV need the
whole cache can hold. Every failure is a RequestError naming the problem; nothing here has state."""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.block_manager import BlockManager
from engine.diffusion.params import DiffusionParams
from engine.diffusion.run import MASK_TOKEN, DiffusionRun
from engine.errors import RequestError
from engine.sampling_params import SamplingParams


def check_ids(ids: list[int], vocab_size: int, max_model_len: int) -> list[int]:
    if not ids:
        raise RequestError("the prompt is empty")
    bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"token ids out of range [0, {vocab_size}): {bad[:5]}")
    if len(ids) >= max_model_len:
        raise RequestError(f"prompt has {len(ids)} tokens; the model's context is {max_model_len}")
    return ids


def diffusion_params(model: Any, tokenizer: Any, params: SamplingParams) -> DiffusionParams | None:
    """The request's block-diffusion settings with mask/eos ids resolved; None for an AR model."""
    if not model.diffusion:
        if params.diffusion is not None:
            raise RequestError(
                "diffusion options need a diffusion model (e.g. LLaDA2); this one is autoregressive"
            )
        return None
    if params.n != 1 or params.logprobs is not None or params.logits_processors:
        raise RequestError("a diffusion model takes n=1 and no logprobs or logits processors")
    if params.constraint is not None and params.constraint.gate is not None:
        raise RequestError("a diffusion model's grammar holds from the first output token (no gate)")
    d = params.diffusion or DiffusionParams()
    mask = d.mask_token_id if d.mask_token_id is not None else mask_token_id(model, tokenizer)
    vocab = model.runtime.vocab_size
    for name, value in (("mask_token_id", mask), ("eos_token_id", d.eos_token_id)):
        if value is not None and not 0 <= value < vocab:
            raise RequestError(f"diffusion.{name} must be a token id in [0, {vocab}), got {value}")
    return dataclasses.replace(d, mask_token_id=mask)


def mask_token_id(model: Any, tokenizer: Any) -> int:
    """The tokenizer's `<|mask|>`, else config.json's `mask_token_id`; never a built-in constant."""
    found = tokenizer.get_vocab().get(MASK_TOKEN) if tokenizer is not None else None
    if found is None:
        found = getattr(model, "mask_token_id", None)
    if found is None:
        raise RequestError(f"the model's tokenizer has no {MASK_TOKEN} token: pass diffusion.mask_token_id")
    return int(found)


def check_fits(
    ids: list[int],
    params: SamplingParams,
    blocks: BlockManager,
    max_model_len: int,
    diffusion: DiffusionParams | None = None,
    prefill_only: bool = False,
) -> None:
    """A request that could never fit in the whole KV cache alone would be preempted forever."""
    capacity = blocks.num_blocks * blocks.block_size
    need = len(ids) if prefill_only else min(len(ids) + params.max_tokens, max_model_len)
    if diffusion is not None:  # whole blocks, masks included, must fit the context
        need = DiffusionRun.total_length(len(ids), params.max_tokens, diffusion.block_length)
        if need > max_model_len:
            raise RequestError(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}), rounded up to whole "
                f"blocks of {diffusion.block_length}, is {need} tokens; the model's context is "
                f"{max_model_len}"
            )
    if need > capacity:
        asked = f"prompt ({len(ids)} tokens)" + (
            "" if prefill_only else f" + max_tokens ({params.max_tokens})"
        )
        fix = "" if prefill_only else "lower max_tokens or "
        raise RequestError(
            f"{asked} needs {need} KV slots, but the cache holds {capacity}: "
            f"{fix}give the engine a larger KV cache"
        )
