"""Per-block parallel decoders: one step's block logits -> which masked positions to commit, and to what.

Legend: B = block length, V = vocabulary, M = the block's masked positions (block_ids == mask id),
τ = threshold, c_i = confidence of position i's proposed token x̂_i (engine/diffusion/sampling.py).
A decoder serves one sequence. The caller runs, per block: `start_block()`, then until the block has
no mask: forward -> the block's logits [B, V] -> `step(...)` -> write `tokens` at `positions`.
Decoders are deterministic given the logits (and the generator when temperature > 0). They never
look at the model: the engine feeds logits from whatever cache strategy it uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.diffusion.params import DiffusionParams
from engine.diffusion.sampling import sample_tokens

NEG_INF = float("-inf")
DINFER_TIE_EPS = 1e-5  # dInfer's τ' = min(τ, max c - 1e-5)


@dataclass(frozen=True)
class BlockCommit:
    """One step's commits: indices into the block (ascending), their tokens and confidences."""

    positions: torch.Tensor  # (n,) int64
    tokens: torch.Tensor  # (n,) int64
    confidences: torch.Tensor  # (n,) float32


def llada2_schedule(block_length: int, steps: int) -> list[int]:
    """k_s for s < S: ⌊B/S⌋, plus 1 for each s < B mod S (the entries sum to B)."""
    base, extra = divmod(block_length, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


class BlockDecoder:
    """Shared loop of all decoders: propose (x̂, c) for every row, choose a subset of M, commit it."""

    def __init__(self, params: DiffusionParams) -> None:
        if params.mask_token_id is None:
            raise ValueError("DiffusionParams.mask_token_id must be resolved (from the tokenizer) first")
        self.params = params
        self.mask_id = params.mask_token_id
        self.step_index = 0

    def start_block(self) -> None:
        """Reset the per-block state (the step counter; subclasses add theirs)."""
        self.step_index = 0

    def step(
        self,
        logits: torch.Tensor,
        block_ids: torch.Tensor,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> BlockCommit:
        """logits [B, V] of the block's rows, block_ids [B] (mask id where undecided) -> commits."""
        if logits.dim() != 2 or block_ids.shape != logits.shape[:1]:
            raise ValueError(
                f"expected logits [B, V] and block_ids [B], "
                f"got {list(logits.shape)} and {list(block_ids.shape)}"
            )
        tokens, conf, chosen = self.decide(logits, block_ids, temperature, top_k, top_p, generator)
        positions = chosen.nonzero()[:, 0]  # (n,) ascending
        return BlockCommit(positions, tokens[positions], conf[positions])

    def decide(
        self,
        logits: torch.Tensor,
        block_ids: torch.Tensor,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step's (x̂ [B], c [B], chosen [B] bool ⊆ M): what `step` commits, before it is picked
        out (a grammar-held run commits only a left-to-right part of it, engine/diffusion/constrained.py)."""
        masked = block_ids == self.mask_id  # (B,)
        tokens, conf = self.propose(logits.float(), masked, temperature, top_k, top_p, generator)
        chosen = self.choose(conf, tokens, masked)  # (B,) bool, a subset of masked
        self.step_index += 1
        return tokens, conf, chosen

    def propose(
        self,
        logits: torch.Tensor,
        masked: torch.Tensor,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂ [B], c [B]) for every row of the block (unmasked rows too: sampling draws per row)."""
        return sample_tokens(logits, temperature, top_k, top_p, generator)

    def choose(self, conf: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def candidates(self, conf: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """dInfer's candidate confidences: c_i for i ∈ M with x̂_i != mask id, else -inf."""
        usable = masked & (tokens != self.mask_id)
        return conf.masked_fill(~usable, NEG_INF)


class LLaDA2Decoder(BlockDecoder):
    """The official LLaDA2 generate() rule, with a schedule of S = min(steps, gen_length) entries
    (upstream: gen_length // minimal_topk, with minimal_topk fixed at its default 1 here).

    conf_i = c_i for i ∈ M else -inf; H = {i : conf_i > τ} (strict). If |H| >= k_s commit H, else
    the top-min(k_s, |M|) positions by conf (torch.topk). k_s = 0 can commit nothing. A proposal
    equal to the mask id is committed like any other token. Past the schedule (unreachable when
    every step commits >= k_s, since Σ k_s = B) k = 1, so the loop always progresses.
    """

    def __init__(self, params: DiffusionParams, gen_length: int | None = None) -> None:
        super().__init__(params)
        steps = params.steps if gen_length is None else min(params.steps, max(gen_length, 1))
        self.schedule = llada2_schedule(params.block_length, steps)

    def choose(self, conf: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        conf = conf.masked_fill(~masked, NEG_INF)  # (B,)
        k = self.schedule[self.step_index] if self.step_index < len(self.schedule) else 1
        high = conf > self.params.threshold  # (B,)
        if int(high.sum()) >= k:
            return high
        chosen = torch.zeros_like(masked)
        n = min(k, int(masked.sum()))
        chosen[conf.topk(n).indices] = True
        return chosen


class ThresholdDecoder(BlockDecoder):
    """dInfer's ThresholdParallelDecoder: τ' = min(τ, max_{i∈M} c_i - 1e-5); commit {i ∈ M : c_i >= τ'}.

    Proposals equal to the mask id are never committed; so the most confident other proposal always
    is (progress), unless every masked position proposes the mask id (then nothing is committed).
    """

    def choose(self, conf: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return _threshold_rule(self.candidates(conf, tokens, masked), self.params.threshold)


class HierarchyDecoder(BlockDecoder):
    """dInfer's HierarchyDecoder (τ_high = threshold, τ_low = low_threshold), over dInfer candidates.

    Split M into maximal runs of contiguous masked positions; in each run accept its
    argmax-confidence position (first on ties) if c > τ_low; also accept every i with c_i > τ_high;
    always accept the global arg-max (so at most one medium-confidence token per run per step).
    """

    def choose(self, conf: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        cand = self.candidates(conf, tokens, masked)  # (B,)
        chosen = cand > self.params.threshold
        if not torch.isfinite(cand).any():
            return chosen
        chosen[_run_argmax(cand, masked, self.params.low_threshold)] = True  # type: ignore[arg-type]
        chosen[cand.argmax()] = True
        return chosen


class CreditDecoder(BlockDecoder):
    """dInfer's CreditThresholdParallelDecoder: tokens that stay top-1 across steps gain confidence.

    Per block a credit tensor C [B, V] starts at 0. At step t: C ← β·C if t > 0; for each i ∈ M,
    C[i, v_i] += (p_i(v_i))^γ with p_i = softmax(ℓ_i) (the raw logits) and v_i = argmax p_i.
    Fused logits ℓ' = ℓ + α·log(1 + C); (x̂, c) are proposed from ℓ' (c from the fused softmax), then
    the threshold rule (`ThresholdDecoder`) chooses.
    """

    def __init__(self, params: DiffusionParams) -> None:
        super().__init__(params)
        self.credit: torch.Tensor | None = None  # (B, V)

    def start_block(self) -> None:
        super().start_block()
        self.credit = None

    def propose(
        self,
        logits: torch.Tensor,
        masked: torch.Tensor,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p_top, v_top = logits.softmax(-1).max(-1)  # (B,) each
        if self.credit is None:
            self.credit = torch.zeros_like(logits)  # (B, V)
        elif self.step_index > 0:
            self.credit.mul_(self.params.decay_beta)
        boost = p_top.pow(self.params.boost_gamma).masked_fill(~masked, 0.0)  # (B,)
        self.credit.scatter_add_(1, v_top[:, None], boost[:, None])
        fused = logits + self.params.credit_alpha * torch.log1p(self.credit)  # (B, V)
        return sample_tokens(fused, temperature, top_k, top_p, generator)

    def choose(self, conf: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return _threshold_rule(self.candidates(conf, tokens, masked), self.params.threshold)


def _threshold_rule(cand: torch.Tensor, threshold: float) -> torch.Tensor:
    """cand [B] (-inf: not a candidate) -> {i : cand_i >= min(τ, max cand - 1e-5)}; none if no candidate."""
    top = cand.max()
    if not torch.isfinite(top):
        return torch.zeros_like(cand, dtype=torch.bool)
    tau = min(threshold, float(top) - DINFER_TIE_EPS)
    return cand >= tau


def _run_argmax(cand: torch.Tensor, masked: torch.Tensor, low: float) -> torch.Tensor:
    """Per maximal run of masked positions, its first arg-max position if that confidence > low."""
    b = masked.shape[0]
    prev = torch.cat([masked.new_zeros(1), masked[:-1]])  # (B,) was the previous position masked
    run = (masked & ~prev).cumsum(0) - 1  # (B,) run index of each masked position
    idx = torch.arange(b, device=cand.device)
    runs = int(run.max()) + 1
    run_max = cand.new_full((runs,), NEG_INF).scatter_reduce(0, run[masked], cand[masked], "amax")  # (R,)
    is_best = masked & (cand == run_max[run.clamp(min=0)]) & (cand > low)  # (B,)
    first = idx.new_full((runs,), b).scatter_reduce(
        0, run[masked], torch.where(is_best, idx, b)[masked], "amin"
    )  # (R,) first best position per run, b where none
    return first[first < b]


def make_decoder(params: DiffusionParams, *, gen_length: int | None = None) -> BlockDecoder:
    """The decoder `params.decoder` names; `gen_length` caps LLaDA2's schedule: S = min(steps, gen_length)."""
    if params.decoder == "llada2":
        return LLaDA2Decoder(params, gen_length)
    if params.decoder == "threshold":
        return ThresholdDecoder(params)
    if params.decoder == "hierarchy":
        return HierarchyDecoder(params)
    return CreditDecoder(params)
