"""Masked-diffusion decoding (LLaDA2 and dInfer-style): settings, token proposals, per-block decoders.

Model-agnostic: block logits [B, V] and the block's token ids flow in, the positions to commit and
their tokens flow out. The engine owns the block loop, the attention masks and the KV cache.
"""

from engine.diffusion.decoders import (
    BlockCommit,
    BlockDecoder,
    CreditDecoder,
    HierarchyDecoder,
    LLaDA2Decoder,
    ThresholdDecoder,
    llada2_schedule,
    make_decoder,
)
from engine.diffusion.params import DECODERS, DiffusionParams
from engine.diffusion.sampling import sample_tokens

__all__ = [
    "DECODERS",
    "BlockCommit",
    "BlockDecoder",
    "CreditDecoder",
    "DiffusionParams",
    "HierarchyDecoder",
    "LLaDA2Decoder",
    "ThresholdDecoder",
    "llada2_schedule",
    "make_decoder",
    "sample_tokens",
]
