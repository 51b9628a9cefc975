"""Sampler: last-position logits [B, V] + one SamplingState per row -> one token (and logprobs) per row.

Per row, in this order:
  (a) logprobs (if asked): log_softmax of the RAW logits; the sampled token's plus the top-n.
  (b) min_tokens: while fewer than min_tokens outputs exist, stop_token_ids (and the eos ids unless
      ignore_eos) are set to -inf.
  (c) penalties: repetition (CTRL rule: positive logits / p, negative * p) over prompt + output
      tokens; then frequency * count + presence * (count > 0) subtracted over output tokens only.
  (d) greedy rows (temperature 0): argmax of the penalised logits.
  (e) sampled rows: / temperature -> top-k -> top-p (smallest prefix reaching p over the top-k
      renormalised, at least one token) -> min-p (relative to the best token); tokens tied with a
      filter's boundary are kept -> softmax -> one uniform from the row's own generator, inverted
      through the row's CDF. Only that uniform comes from the generator, so a seeded row draws the
      same tokens whatever else is in the batch and wherever it sits.
A row left with no finite logit (everything masked, or non-finite values) falls back to the argmax
of its raw logits. The math stays on the logits' device; only the B uniforms cross from the CPU.

Legend: B = rows in the batch, V = vocabulary, P = penalised rows, S = sampled (non-greedy) rows,
T = sampled rows that use top-k/top-p, K = max top-k among them (V if one has none),
M = sampled rows that use min-p, L = rows that want logprobs, N = token ids gathered from lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.sampling_params import SamplingParams

NEG_INF = float("-inf")


class _IdCache:
    """A CPU int64 copy of an append-only token list: each call converts only the new tail.

    A list that got shorter (the engine rewound it) is converted again from scratch.
    """

    def __init__(self) -> None:
        self.ids = torch.zeros(0, dtype=torch.long)  # (N,)

    def of(self, tokens: list[int]) -> torch.Tensor:
        n = self.ids.numel()
        if len(tokens) < n:
            self.ids = torch.tensor(tokens, dtype=torch.long)
        elif len(tokens) > n:
            self.ids = torch.cat([self.ids, torch.tensor(tokens[n:], dtype=torch.long)])
        return self.ids


@dataclass
class SamplingState:
    """One request's sampling state; the engine owns it and appends to output_token_ids each step.

    Both token lists are treated as append-only (a shortened list is re-read in full); replacing
    tokens in place without changing the length would leave the penalties' cached copy stale.
    """

    params: SamplingParams
    generator: torch.Generator  # from make_generator(params.seed)
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    eos_token_ids: frozenset[int]
    # CPU int64 copies of the two token lists, extended by their new tail (for the penalties)
    _prompt_ids: _IdCache = field(default_factory=_IdCache, init=False, repr=False, compare=False)
    _output_ids: _IdCache = field(default_factory=_IdCache, init=False, repr=False, compare=False)

    @classmethod
    def new(
        cls, params: SamplingParams, prompt_token_ids: list[int], eos_token_ids: frozenset[int] | set[int]
    ) -> SamplingState:
        """A fresh state: no outputs yet, a generator seeded from params.seed."""
        return cls(params, make_generator(params.seed), list(prompt_token_ids), [], frozenset(eos_token_ids))

    def prompt_ids(self) -> torch.Tensor:
        """(N,) int64 CPU tensor of prompt_token_ids."""
        return self._prompt_ids.of(self.prompt_token_ids)

    def output_ids(self) -> torch.Tensor:
        """(N,) int64 CPU tensor of output_token_ids."""
        return self._output_ids.of(self.output_token_ids)

    def min_tokens_banned(self) -> list[int]:
        """Token ids masked to -inf at this step because min_tokens is not reached yet (sorted)."""
        p = self.params
        if len(self.output_token_ids) >= p.min_tokens:
            return []
        banned = set(p.stop_token_ids) if p.ignore_eos else set(p.stop_token_ids) | self.eos_token_ids
        return sorted(banned)


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one per row
    # per row: None, or {top-n ids in rank order: logprob, then the sampled id if not among them}
    logprobs: list[dict[int, float] | None]


def _on(values: list, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small per-row list as a tensor on `device`; non_blocking so it does not wait for the GPU."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded when `seed` is given, otherwise from OS entropy."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


@torch.no_grad()
def sample(
    logits: torch.Tensor, states: list[SamplingState], raw_logits: torch.Tensor | None = None
) -> SamplerOutput:
    """logits [B, V] (float32, any device) + B states -> B token ids and per-row logprobs.

    `raw_logits` [B, V]: the model's logits before request-level logits processors made `logits`;
    logprobs and the dead-row fallback use them (default: `logits`).
    """
    if logits.dim() != 2 or logits.shape[0] != len(states):
        raise ValueError(f"sample() needs logits [B, V] for {len(states)} states, got {tuple(logits.shape)}")
    if not states:
        return SamplerOutput([], [])
    logits = logits.float()  # (B, V); a no-op for float32
    work = penalised_logits(logits, states)  # (B, V)
    best, tokens = work.max(-1)  # (B,) each: the greedy answer for every row
    alive = best > NEG_INF  # (B,) False where all -inf (or NaN)
    rows = [i for i, s in enumerate(states) if not s.params.greedy]
    if len(rows) == len(states):
        tokens, alive = _draw(work, states)
    elif rows:
        idx = _on(rows, logits.device)  # (S,)
        tokens[idx], alive[idx] = _draw(work[idx], [states[i] for i in rows])
    raw = logits if raw_logits is None else raw_logits.float()  # (B, V)
    if rows or work is not raw:  # otherwise a dead row's max is its raw argmax already
        tokens = torch.where(alive, tokens, raw.argmax(-1))  # (B,)
    token_ids = tokens.tolist()
    return SamplerOutput(token_ids, _logprobs(raw, states, token_ids))


def penalised_logits(logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
    """Steps (b) and (c): logits [B, V] -> (B, V) with min_tokens bans and penalties applied.

    Returns `logits` itself when no row needs either; otherwise a new tensor (the input is untouched).
    """
    banned = [s.min_tokens_banned() for s in states]
    if not any(banned) and not any(s.params.has_penalties for s in states):
        return logits
    work = logits.clone()  # (B, V)
    _mask_tokens(work, banned)
    _apply_penalties(work, states)
    return work


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """logits [V] -> temperature-scaled logits with top-k/top-p/min-p filtered entries at -inf.

    The single-row reference of step (e); for greedy params everything but the argmax is -inf.
    """
    if p.greedy:
        return torch.full_like(logits, NEG_INF).index_fill_(-1, logits.argmax(-1).reshape(1), 0.0)
    return _filtered(logits[None].float(), [p])[0]


def _mask_tokens(work: torch.Tensor, banned: list[list[int]]) -> None:
    """In place: work[i, t] = -inf for every t in banned[i] inside the vocabulary."""
    vocab = work.shape[1]
    rows = [i for i, ids in enumerate(banned) for t in ids if 0 <= t < vocab]
    cols = [t for ids in banned for t in ids if 0 <= t < vocab]
    if rows:
        work[_on(rows, work.device), _on(cols, work.device)] = NEG_INF


def _apply_penalties(work: torch.Tensor, states: list[SamplingState]) -> None:
    """In place on the rows with penalties: repetition (prompt + output), frequency/presence (output)."""
    rows = [i for i, s in enumerate(states) if s.params.has_penalties]
    if not rows:
        return
    dev, vocab = work.device, work.shape[1]
    pen = [states[i] for i in rows]
    idx = _on(rows, dev)  # (P,)
    sub = work[idx]  # (P, V) copy
    counts = torch.zeros_like(sub)  # (P, V) occurrences in the output so far
    r, c = _flat_ids([s.output_ids() for s in pen], vocab, dev)
    counts.index_put_((r, c), torch.ones((), device=dev), accumulate=True)
    rep = [s.params.repetition_penalty for s in pen]
    if any(x != 1.0 for x in rep):
        seen = counts > 0  # (P, V) output ids, then the prompt ids
        seen[_flat_ids([s.prompt_ids() for s in pen], vocab, dev)] = True
        penalty = _on(rep, dev)[:, None]  # (P, 1)
        sub = torch.where(seen, torch.where(sub > 0, sub / penalty, sub * penalty), sub)
    freq = _on([s.params.frequency_penalty for s in pen], dev)[:, None]  # (P, 1)
    pres = _on([s.params.presence_penalty for s in pen], dev)[:, None]  # (P, 1)
    work[idx] = sub - freq * counts - pres * (counts > 0)


def _flat_ids(ids: list[torch.Tensor], vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row id tensors -> (row, id) index pairs (N,), (N,) on `device`; ids outside [0, V) dropped."""
    lengths = torch.tensor([t.numel() for t in ids])  # (P,)
    rows = torch.repeat_interleave(torch.arange(len(ids)), lengths)  # (N,)
    cols = torch.cat(ids)  # (N,)
    keep = (cols >= 0) & (cols < vocab)
    return rows[keep].to(device, non_blocking=True), cols[keep].to(device, non_blocking=True)


def _draw(work: torch.Tensor, states: list[SamplingState]) -> tuple[torch.Tensor, torch.Tensor]:
    """work [S, V] penalised logits -> (S,) drawn ids and (S,) whether the row had anything to draw."""
    probs = _filtered(work, [s.params for s in states]).softmax(-1)  # (S, V); NaN for a dead row
    u = _uniforms([s.generator for s in states], work.device)  # (S,)
    cdf = probs.cumsum(-1)  # (S, V)
    total = cdf[:, -1:]  # (S, 1); NaN propagates here from any NaN in the row
    ok = (total > 0).squeeze(-1)  # (S,)
    # the first id whose CDF exceeds the target has mass; capping the target just below the total
    # keeps u * total from rounding up to it (which would point past the last id with mass)
    target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))  # (S, 1)
    ids = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # (S,)
    return ids.clamp_max(work.shape[1] - 1), ok


def _uniforms(generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    """(S,) float32 in [0, 1) on `device`: one draw from each row's own generator."""
    if all(g.device.type == "cpu" for g in generators):
        return torch.cat([torch.rand(1, generator=g) for g in generators]).to(device, non_blocking=True)
    return torch.cat([torch.rand(1, generator=g, device=g.device).to(device) for g in generators])


def _filtered(work: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """work [S, V] -> (S, V) temperature-scaled logits, top-k/top-p/min-p rejects at -inf.

    Each filter yields a per-row floor (a logit value); a token survives when its logit >= the floor,
    so ties at a boundary are all kept and the result never depends on how ties were ordered.
    """
    dev = work.device
    scaled = work / _on([p.temperature for p in params], dev)[:, None]  # (S, V)
    top_rows = [j for j, p in enumerate(params) if p.top_k > 0 or p.top_p < 1.0]
    min_p_rows = [j for j, p in enumerate(params) if p.min_p > 0]
    if not top_rows and not min_p_rows:
        return scaled
    floor = torch.full((len(params),), NEG_INF, device=dev)  # (S,)
    if top_rows:
        idx = _on(top_rows, dev)  # (T,)
        floor[idx] = _top_k_top_p_floor(scaled[idx], [params[j] for j in top_rows])
    if min_p_rows:
        # p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p): independent of the other filters
        idx = _on(min_p_rows, dev)  # (M,)
        log_min_p = _on([math.log(params[j].min_p) for j in min_p_rows], dev)  # (M,)
        floor[idx] = torch.maximum(floor[idx], scaled[idx].max(-1).values + log_min_p)
    return scaled.masked_fill(scaled < floor[:, None], NEG_INF)


def _top_k_top_p_floor(scaled: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """scaled [T, V] -> (T,) the lowest logit kept by top-k, then top-p over the top-k renormalised.

    Top-p keeps the smallest prefix (best first) whose mass reaches top_p. Only the K = max(top_k)
    best values are sorted (all V when a row has no top-k); the mass is normalised over the whole
    row, so a row's floor is the same whatever K the rest of the batch asks for.
    """
    dev, vocab = scaled.device, scaled.shape[1]
    ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    kmax = max(ks)
    values = scaled.topk(kmax, -1).values  # (T, K) best first (K = V sorts whole rows)
    kth = values.gather(-1, _on(ks, dev)[:, None] - 1)  # (T, 1) the k-th best logit
    best = values[:, :1]  # (T, 1)
    mass = (scaled - best).exp().masked_fill(scaled < kth, 0.0).sum(-1, keepdim=True)  # (T, 1)
    probs = (values - best).exp() / mass  # (T, K) under the top-k renormalised distribution
    before = F.pad(probs.cumsum(-1)[:, :-1], (1, 0))  # (T, K) mass strictly ahead of each position
    top_p = _on([p.top_p if p.top_p < 1.0 else math.inf for p in params], dev)  # (T,)
    inside = (before < top_p[:, None]) & (values >= kth)  # (T, K); position 0 is always inside
    return values.masked_fill(~inside, math.inf).min(-1).values  # (T,)


def _logprobs(
    logits: torch.Tensor, states: list[SamplingState], token_ids: list[int]
) -> list[dict[int, float] | None]:
    """Per row: None, or raw-logit logprobs of the top-n ids (rank order) and of the sampled id."""
    out: list[dict[int, float] | None] = [None] * len(states)
    rows = [i for i, s in enumerate(states) if s.params.logprobs is not None]
    if not rows:
        return out
    dev = logits.device
    lp = logits[_on(rows, dev)].log_softmax(-1)  # (L, V)
    chosen = lp.gather(-1, _on([token_ids[i] for i in rows], dev)[:, None]).squeeze(-1)  # (L,)
    n = min(max(states[i].params.logprobs or 0 for i in rows), lp.shape[1])
    top = lp.topk(n, -1)  # values and ids (L, n), best first; n may be 0
    chosen_lp, top_lp, top_ids = chosen.tolist(), top.values.tolist(), top.indices.tolist()
    for j, i in enumerate(rows):
        k = states[i].params.logprobs or 0
        entry = dict(zip(top_ids[j][:k], top_lp[j][:k], strict=True))
        entry.setdefault(token_ids[i], chosen_lp[j])
        out[i] = entry
    return out
