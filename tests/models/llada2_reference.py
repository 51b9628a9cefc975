"""Reference block-diffusion generate for tests: the official LLaDA2 loop without any cache.

Flow (spec llada2.md, "Official generate() algorithm"): x = [prompt | MASK...] padded to whole
blocks; for each block b from ⌊P/B⌋, every step forwards the window x[:(b+1)B] with block-causal
attention (positions 0..), hands the last B rows' logits to the decoder and writes its commits.
EOS: with `eos_early_stop`, once a committed token is EOS and every position in [P, e) is decoded
(e = the window's first EOS) it returns x[:e+1] *prompt included* (the upstream quirk the golden
run records); otherwise decoding stops after the first block holding an EOS and the output is
x[P:P+gen_length] cut after its first EOS. Not part of the engine: it exists to pin the decoders
and the model against the golden runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from engine.diffusion import DiffusionParams, make_decoder
from engine.layers.attention import BlockCausalContext
from engine.model_base import CausalLM


@dataclass
class StepRecord:
    """One forward + commit: the block, the window's end, absolute positions and what was written."""

    block: int
    window_end: int
    positions: list[int]
    tokens: list[int]
    confidences: list[float]


@dataclass
class Generation:
    output_ids: list[int]
    steps: list[StepRecord] = field(default_factory=list)
    block_logits: list[torch.Tensor] = field(default_factory=list)  # (B, V) per forward

    @property
    def nfe(self) -> int:
        return len(self.steps)


@torch.inference_mode()
def reference_generate(
    model: CausalLM,
    prompt: list[int],
    params: DiffusionParams,
    gen_length: int,
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> Generation:
    """Decode `gen_length` tokens after `prompt`; params.mask_token_id / eos_token_id must be set."""
    b_len, p_len, mask, eos = params.block_length, len(prompt), params.mask_token_id, params.eos_token_id
    n_blocks = math.ceil((p_len + gen_length) / b_len)
    x = torch.tensor(prompt + [mask] * (n_blocks * b_len - p_len))  # (nb*B,)
    decoder = make_decoder(params, gen_length=gen_length)
    gen = Generation(output_ids=[])
    for block in range(p_len // b_len, n_blocks):
        end = (block + 1) * b_len
        decoder.start_block()
        for _ in range(4 * b_len):  # generous cap: every decoder here commits >= 1 per step
            if not (x[end - b_len : end] == mask).any():
                break
            logits = _block_logits(model, x[:end], b_len)
            commit = decoder.step(logits, x[end - b_len : end], temperature, generator=generator)
            absolute = commit.positions + end - b_len
            x[absolute] = commit.tokens
            gen.block_logits.append(logits)
            gen.steps.append(
                StepRecord(block, end, absolute.tolist(), commit.tokens.tolist(), commit.confidences.tolist())
            )
            if params.eos_early_stop and (commit.tokens == eos).any():
                first_eos = int((x[:end] == eos).nonzero()[0, 0])
                if not (x[p_len:first_eos] == mask).any():
                    gen.output_ids = x[: first_eos + 1].tolist()  # prompt included (upstream quirk)
                    return gen
        if (x[p_len:end] == eos).any():
            break
    gen.output_ids = _cut_after_eos(x[p_len : p_len + gen_length].tolist(), eos)
    return gen


def _block_logits(model: CausalLM, window: torch.Tensor, block_length: int) -> torch.Tensor:
    """Block-causal forward over the window (positions 0..) -> logits of its last B rows [B, V]."""
    positions = torch.arange(window.shape[0])
    hidden = model(window, positions, BlockCausalContext(block_length))  # (W, d)
    return model.compute_logits(hidden[-block_length:])


def _cut_after_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids
