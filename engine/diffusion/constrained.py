"""Block diffusion held to a grammar: the block is committed left to right, in runs the decoder chose.

A grammar state follows a prefix, so only the block's first masked position (the frontier f: every
position before it is decided, none after it, an invariant this rule keeps) has a known set of
allowed tokens. Per step:

1. the frontier row's logits get the grammar's mask (disallowed tokens -inf), then the request's
   decoder proposes and chooses as it always does (x̂, c, chosen ⊆ M);
2. the frontier is committed whatever the decoder chose (its token is allowed: the step always
   progresses), then f + 1, f + 2, ... while the decoder chose them;
3. the matcher takes that run's tokens in order and stops at the first one the grammar refuses
   (`try_consume_tokens`): only the accepted prefix is committed, the rest stays masked and is
   proposed again next step with the new context.

So every committed token is one the grammar allows at its place, a confident run is still committed
in one step (the parallel decoding keeps its speed where the grammar and the model agree), and the
decoders' own rules are untouched. Once the grammar is complete only end-of-sequence tokens are
allowed: every masked position left gets one in that step (all of them lie past the end).
"""

from __future__ import annotations

import torch

from engine.diffusion.decoders import BlockCommit, BlockDecoder
from engine.structured.constraint import GrammarConstraint
from engine.structured.masks import BiasTable

_BIAS = BiasTable()


def holds(constraint: GrammarConstraint | None) -> bool:
    """Whether the next commit is held to the grammar (not once the output broke it)."""
    return constraint is not None and constraint.error is None


def constrained_step(
    decoder: BlockDecoder,
    constraint: GrammarConstraint,
    logits: torch.Tensor,
    block_ids: torch.Tensor,
    sampling: tuple[float, int | None, float | None],
    generator: torch.Generator | None,
) -> BlockCommit:
    """logits [B, V] of the block, block_ids [B] -> this step's commits (a run from the frontier)."""
    masked = block_ids == decoder.mask_id  # (B,)
    front = int(masked.nonzero()[0, 0])
    vocab = logits.shape[1]
    allowed = torch.empty(1, (vocab + 31) // 32, dtype=torch.int32)  # (1, W)
    constraint.fill(allowed, 0)
    held = logits.float().clone()  # (B, V)
    complete = constraint.matcher.is_stopped()  # the mask allows only the end of sequence
    rows = masked if complete else front
    held[rows] += _BIAS.bias(allowed, vocab, held)[0]
    tokens, conf, chosen = decoder.decide(held, block_ids, *sampling, generator)
    if complete:
        positions = masked.nonzero()[:, 0]  # (n,)
        return BlockCommit(positions, tokens[positions], conf[positions])
    end = front + 1
    while end < masked.shape[0] and bool(masked[end]) and bool(chosen[end]):
        end += 1
    run = tokens[front:end].tolist()
    taken = constraint.matcher.try_consume_tokens(run)
    if taken == 0:  # the frontier's own token was refused: cannot happen with the mask applied
        constraint.error = f"the grammar rejected token {run[0]}: {constraint.matcher.get_error()}"
        taken = 1
    positions = torch.arange(front, front + taken)  # (n,)
    return BlockCommit(positions, tokens[positions], conf[positions])
