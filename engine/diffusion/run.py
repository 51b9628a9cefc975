"""DiffusionRun: one request's block-diffusion decoding inside the engine (LLaDA2 semi-autoregressive).

Legend: P = prompt length, G = gen length (max_tokens), B = block length, MASK = the mask token id.
The sequence's `token_ids` is the window x[:end] of x = [prompt | MASK ...]: the finished blocks, then
the block being decoded (its undecided positions hold MASK). Blocks start at floor(P/B)*B, so the
first one holds the prompt's tail (never changed). Per step the engine forwards x[num_computed:end]
with the block-causal mask (a token sees every token of its own and earlier blocks), takes the
current block's B logits rows and calls `commit`, which lets the decoder fill some masked positions.
KV cache: under the block-causal mask a finished block's KV never changes, so with `prefix_cache`
num_computed stays at the current block's start (`kv_floor`) and each step forwards only that block;
the step after a block finishes forwards it once more together with the next block (its KV is then
written with its final tokens: the fused "commit + decode" step, one forward). Without the cache
every step forwards the whole window (the official generate()). Finished blocks' tokens (up to
P + G) are handed to the engine's per-token bookkeeping, which ends the request at EOS or G tokens.
A request held to a grammar commits each block left to right instead (engine/diffusion/constrained.py).
"""

from __future__ import annotations

import torch

from engine.diffusion.constrained import constrained_step, holds
from engine.diffusion.decoders import make_decoder
from engine.diffusion.params import DiffusionParams
from engine.output_processor import process_token
from engine.sequence import TrackedRequest
from engine.structured.constraint import FAILED, GrammarConstraint


class DiffusionRun:
    def __init__(
        self,
        params: DiffusionParams,
        prompt_len: int,
        gen_length: int,
        eos_ids: frozenset[int],
        sampling: tuple[float, int | None, float | None],
        generator: torch.Generator | None,
        constraint: GrammarConstraint | None = None,
    ) -> None:
        if params.mask_token_id is None:
            raise ValueError("DiffusionRun needs params.mask_token_id resolved")
        self.params, self.mask_id = params, params.mask_token_id
        self.prompt_len, self.gen_length, self.eos_ids = prompt_len, gen_length, eos_ids
        self.temperature, self.top_k, self.top_p = sampling
        self.generator = generator
        self.constraint = constraint  # a grammar: the block is committed left to right (constrained.py)
        bl = params.block_length
        self.total = -(-(prompt_len + gen_length) // bl) * bl  # nb * B: x's whole length
        self.block = prompt_len // bl  # the block being decoded
        self.decoder = make_decoder(params, gen_length=gen_length)
        self.decoder.start_block()
        self.num_forwards = 0
        self.step_commits: list[list[int]] = []
        self.final_upto = prompt_len  # x[prompt_len:final_upto] has been handed out
        self.done = False

    @staticmethod
    def total_length(prompt_len: int, gen_length: int, block_length: int) -> int:
        return -(-(prompt_len + gen_length) // block_length) * block_length

    def initial_window(self, prompt: list[int]) -> list[int]:
        return [*prompt, *[self.mask_id] * (self.block_end - self.prompt_len)]

    @property
    def block_start(self) -> int:
        return self.block * self.params.block_length

    @property
    def block_end(self) -> int:
        return self.block_start + self.params.block_length

    @property
    def kv_floor(self) -> int:
        """Tokens whose KV is final after a forward of the current block: the finished blocks."""
        return self.block_start if self.params.prefix_cache else 0

    def chunk(self, num_computed: int, budget: int) -> int:
        """Tokens to forward this step: the rest of the window if it fits `budget`, else a prefix of
        finished blocks (whole blocks only: a token's KV depends on every token of its block),
        else 0 (it waits for a step with more room)."""
        need = self.block_end - num_computed
        if need <= budget:
            return need
        bl = self.params.block_length
        aligned = min((num_computed + budget) // bl * bl, self.block_start)
        return max(aligned - num_computed, 0)

    def commit(self, token_ids: list[int], logits: torch.Tensor) -> list[int]:
        """One decoding step on the current block's logits [B, V]: fill `token_ids` in place and
        return the tokens that became final (to hand out, in order); `done` once no block is left."""
        start, end = self.block_start, self.block_end
        block = torch.tensor(token_ids[start:end], dtype=torch.long)  # (B,)
        sampling = (self.temperature, self.top_k, self.top_p)
        if holds(self.constraint):
            step = constrained_step(self.decoder, self.constraint, logits, block, sampling, self.generator)
        else:
            step = self.decoder.step(logits, block, *sampling, self.generator)
        self.num_forwards += 1
        for pos, tok in zip(step.positions.tolist(), step.tokens.tolist(), strict=True):
            token_ids[start + pos] = tok
        self.step_commits.append([start + p for p in step.positions.tolist()])
        if self.params.eos_early_stop and self._early_eos(token_ids, step.tokens.tolist()):
            return self._finalize(token_ids, self._first_eos(token_ids) + 1)
        if self.mask_id in token_ids[start:end]:
            return []
        final = self._finalize(token_ids, end)
        if end >= self.total:
            self.done = True
        else:
            self.block += 1
            token_ids.extend([self.mask_id] * self.params.block_length)
            self.decoder.start_block()
        return final

    def _finalize(self, token_ids: list[int], upto: int) -> list[int]:
        """Hand out x[final_upto:upto] (never past P + G)."""
        upto = min(upto, self.prompt_len + self.gen_length)
        out = token_ids[self.final_upto : upto]
        self.final_upto = max(self.final_upto, upto)
        if upto >= self.prompt_len + self.gen_length:
            self.done = True
        return out

    def _first_eos(self, token_ids: list[int]) -> int:
        return next(i for i in range(self.prompt_len, len(token_ids)) if token_ids[i] in self.eos_ids)

    def _early_eos(self, token_ids: list[int], committed: list[int]) -> bool:
        """eos_early_stop: an EOS was committed and everything before the first EOS is decoded."""
        if not any(t in self.eos_ids for t in committed):
            return False
        e = self._first_eos(token_ids)
        if self.mask_id in token_ids[self.prompt_len : e]:
            return False
        self.done = True
        return True


MASK_TOKEN = "<|mask|>"  # LLaDA2's mask token; its id is read from the tokenizer (or the request)
_NO_CONTEXT_LIMIT = 1 << 62  # the whole window was checked against the context at admission


def start_diffusion(req: TrackedRequest, params: DiffusionParams) -> None:
    """Make `req` (a new request's only sample) a block-diffusion run; its sequence's tokens become the
    first window: the prompt, then masks up to the end of the block holding the prompt's tail."""
    seq, p = req.seq, req.seq.params
    if params.eos_token_id is not None and not p.ignore_eos:
        req.eos = frozenset({params.eos_token_id})
    sampling = (p.temperature, p.top_k or None, p.top_p if p.top_p < 1 else None)
    prompt_len, generator = len(seq.prompt_token_ids), req.sampling.generator
    run = DiffusionRun(params, prompt_len, p.max_tokens, req.eos, sampling, generator, p.constraint)
    seq.diffusion = run
    seq.token_ids = run.initial_window(seq.prompt_token_ids)


def diffuse_step(req: TrackedRequest, logits: torch.Tensor) -> bool:
    """Apply one forward's block logits [B, V] to `req`; True if it has new tokens or finished."""
    seq, out = req.seq, req.output
    run: DiffusionRun = seq.diffusion
    seq.num_computed = run.kv_floor  # the current block's KV is provisional: recomputed next step
    final = run.commit(seq.token_ids, logits)
    out.num_forwards = run.num_forwards
    if run.constraint is not None and run.constraint.error is not None:
        out.finish_reason, out.stop_reason = "error", FAILED + run.constraint.error
        out.step_commits = run.step_commits
        return True
    for token in final:
        process_token(req, token, None, _NO_CONTEXT_LIMIT)
        if out.finished:
            break
    if run.done and not out.finished:  # eos_early_stop ended it (the EOS is the last token)
        out.finish_reason, out.stop_reason = "stop", out.token_ids[-1] if out.token_ids else None
        out.metrics.completion_tokens = len(out.token_ids)
    if out.finished:
        out.step_commits = run.step_commits
    return bool(final) or out.finished
