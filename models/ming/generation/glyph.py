"""Ming 2.0's glyph branch: the text a prompt quotes, rendered by ByT5 into extra condition tokens.

Flow: the user's prompt -> `extract_glyph_text` ('Text "<span>". ' or "") -> ByT5 bytes, padded to
byt5_max_length (`GlyphEncoder.tokens`) -> transformers' `T5Stack` (the ByT5 encoder) ->
`ByT5Mapper` (upstream's `T5EncoderBlockByT5Mapper`: more T5 blocks, RMS norm, Linear to the
condition width, RMS norm) -> padded slots zeroed -> [T, c], appended after the condition's [Q, c]
BEFORE the condition MLP (upstream concatenates `encoder_hidden_states`; the DiT wrapper maps it).
Legend: B = texts, T = byt5_max_length (glyph tokens), d = ByT5 d_model, c = condition width.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5Block, T5LayerNorm, T5Stack

# Upstream `get_text_from_prompt` (processing_bailingmm2.py): these patterns, searched in this order
# (every "..." span first, then ‘...’, then “...”); the LAST span of that list is the text.
_SPANS = (re.compile(r'"(.*?)"'), re.compile(r"‘(.*?)’"), re.compile(r"“(.*?)”"))
_OPENERS = ('"', "‘", "“")
_REMOVAL_WORDS = ("remove", "delete", "erase")
_APOSTROPHE_SPAN_LIMIT = 20  # a '...' span this heavy (CJK chars count 3) is not a quote


def extract_glyph_text(prompt: str) -> str:
    """The text a prompt asks to render, as upstream feeds ByT5: 'Text "<span>". ', or "" (no span,
    an empty last span, or one span preceded by remove / delete / erase: nothing to draw)."""
    if "'" in prompt and _apostrophes_are_quotes(prompt):
        prompt = prompt.replace("'", '"')
    spans = [span for pattern in _SPANS for span in pattern.findall(prompt)]
    if len(spans) == 1 and _removal_before_quote(prompt):
        spans = []
    if not spans or not spans[-1]:
        return ""
    return f'Text "{spans[-1]}". '


def _apostrophes_are_quotes(prompt: str) -> bool:
    """Upstream `check_single_quotes`: an even number of ' whose pairs (1st-2nd, 3rd-4th, ...) each
    enclose a short span (3 per CJK ideograph U+4E00..U+9FFF, 1 per other char, < 20 in all)."""
    where = [i for i, ch in enumerate(prompt) if ch == "'"]
    if len(where) % 2:
        return False
    for start, end in zip(where[::2], where[1::2], strict=True):
        span = prompt[start + 1 : end]
        cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in span)
        if 3 * cjk + (len(span) - cjk) >= _APOSTROPHE_SPAN_LIMIT:
            return False
    return True


def _removal_before_quote(prompt: str) -> bool:
    """A removal word (case-insensitive; its first occurrence) before the first opening quote."""
    first_quote = min(i for i in (prompt.find(q) for q in _OPENERS) if i >= 0)
    lowered = prompt.lower()
    return any(word in lowered and lowered.find(word) < first_quote for word in _REMOVAL_WORDS)


class ByT5Mapper(nn.Module):
    """Upstream's `T5EncoderBlockByT5Mapper`, same parameter names: `blocks` (T5 encoder blocks, the
    first with its own relative position bias; None for 0 layers), `layer_norm`, then, when
    `channels` is set, `channel_mapper` (Linear d -> c) and `final_layer_norm`."""

    def __init__(self, config: T5Config, num_layers: int, channels: int | None) -> None:
        super().__init__()
        blocks = [T5Block(config, has_relative_attention_bias=i == 0, layer_idx=i) for i in range(num_layers)]
        self.blocks = nn.ModuleList(blocks) if blocks else None
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.channel_mapper = self.final_layer_norm = None
        if channels is not None:
            self.channel_mapper = nn.Linear(config.d_model, channels)
            self.final_layer_norm = T5LayerNorm(channels, eps=config.layer_norm_epsilon)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ByT5 states [B, T, d] and the padding mask [B, T] (1 = byte) -> [B, T, c]."""
        dtype = self.layer_norm.weight.dtype
        keep = mask[:, None, None, :].to(dtype)  # (B, 1, 1, T): keys every query may see
        additive = (1.0 - keep) * torch.finfo(dtype).min
        bias = None  # block 0's relative position bias, shared by the others (as in T5)
        for block in self.blocks or ():
            hidden, bias, _ = block(hidden, attention_mask=additive, position_bias=bias)
        hidden = self.layer_norm(hidden)  # (B, T, d)
        if self.channel_mapper is not None:
            hidden = self.final_layer_norm(self.channel_mapper(hidden))  # (B, T, c)
        return hidden


class GlyphEncoder(nn.Module):
    """ByT5 tokenizer + `encoder` (transformers' T5Stack, the keys of `byt5_model.pt`) + `mapper`
    (the keys of `byt5_mapper.pt`). `forward(texts)` -> glyph tokens [B, T, c], zero on padding."""

    def __init__(self, tokenizer: Any, encoder: T5Stack, mapper: ByT5Mapper, max_length: int) -> None:
        super().__init__()
        self.tokenizer, self.encoder, self.mapper, self.max_length = tokenizer, encoder, mapper, max_length

    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) [B, T]: UTF-8 bytes + </s>, truncated and right-padded to max_length."""
        enc = self.tokenizer(
            texts, padding="max_length", max_length=self.max_length, truncation=True,
            add_special_tokens=True, return_tensors="pt",
        )  # fmt: skip
        return enc.input_ids, enc.attention_mask

    @torch.inference_mode()
    def forward(self, texts: list[str]) -> torch.Tensor:
        ids, mask = self.tokens(texts)
        device = self.mapper.layer_norm.weight.device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask.float()).last_hidden_state  # (B, T, d)
        glyphs = self.mapper(hidden, mask)  # (B, T, c)
        return glyphs * mask.unsqueeze(-1).to(glyphs.dtype)  # padded slots -> 0
