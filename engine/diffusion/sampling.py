"""Per-position token proposals of the diffusion decoders: logits [B, V] -> (tokens [B], confidence [B]).

Legend: B = positions of the current block, V = vocabulary.
Temperature 0 is greedy with the LLaDA2.1 fix (x̂ = argmax ℓ, p̂ = softmax(ℓ)[x̂]); temperature T > 0
divides by T, keeps the top-k, then the top-p nucleus, and draws from the filtered softmax with the
caller's generator (p̂ = the drawn token's probability under that filtered distribution).
"""

from __future__ import annotations

import torch

from engine.errors import RequestError


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (tokens [B] int64, confidence [B] float32). top_k 0/None and top_p 1/None: off.

    LLaDA2.0's own sampler samples at T = 1 when asked for temperature 0 (a bug); call this with
    temperature=1.0 to reproduce it.
    """
    _check(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(-1)  # (B,) first index among ties
        conf = logits.softmax(-1).gather(-1, tokens[:, None])[:, 0]  # (B,)
        return tokens, conf
    if temperature != 1:
        logits = logits / temperature
    if top_k:
        logits = _keep_top_k(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = _keep_top_p(logits, top_p)
    probs = logits.softmax(-1)  # (B, V)
    tokens = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
    return tokens[:, 0], probs.gather(-1, tokens)[:, 0]


def _keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits below the k-th largest of their row -> -inf (ties with the k-th are kept)."""
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def _keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest best-first prefix whose probability mass reaches p (at least one token)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
    probs = sorted_logits.softmax(-1)  # (B, V)
    mass_before = probs.cumsum(-1) - probs  # (B, V) mass of the better-ranked tokens
    drop_sorted = mass_before >= p  # position 0 has mass 0 < p: always kept
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # (B, V) back in vocab order
    return logits.masked_fill(drop, float("-inf"))


def _check(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature >= 0:
        raise RequestError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise RequestError(f"top_k must be an integer >= 0 (0: off), got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1
    ):
        raise RequestError(f"top_p must be in (0, 1], got {top_p!r}")
