"""Sampler: last-position logits [B, V] float32 -> one token per row, each row with its own params.

Greedy rows take the argmax. Sampled rows: temperature -> top-k -> top-p -> min-p filters, then a
draw from that row's own torch.Generator (seeded per request), so a request's tokens depend only on
its seed and its logits, not on what else is in the batch.
"""

from __future__ import annotations

import torch

from engine.sampling_params import SamplingParams


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """logits [V] -> scaled logits with the filtered-out entries at -inf."""
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.shape[-1]:
        kth = logits.topk(p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= p.top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    if p.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """logits [B, V] -> B token ids."""
    out: list[int] = []
    greedy = logits.argmax(-1).tolist()
    for row, p, gen, best in zip(logits, params, generators, greedy, strict=True):
        if p.greedy:
            out.append(best)
            continue
        probs = filter_logits(row.float(), p).softmax(-1)
        out.append(int(torch.multinomial(probs.cpu(), 1, generator=gen).item()))
    return out


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
