"""Multimodal prompts on the engine: media encoded once per request, then per-token forward inputs.

Flow: `add_request(ids, params, media=MediaInputs(tensors))` -> in the caller's thread (never the
engine loop) the model's `prepare_prompt(input_ids, **tensors)` runs its encoders and returns a
`PromptInputs` -> the sequence keeps it -> each step the runner asks every such sequence for the
inputs of the tokens it schedules (`forward_args(start, end)`) and `merge_forward_args` packs them
with the plain sequences' into one batch -> `model(ids, positions, ctx, embeds=..., gate=...)`.

The batch contract (names the model's `forward` takes as keywords; T = tokens in the step, P =
position rows, M = injected rows, d = hidden):
- `positions` [P, T]: multi-row rotary positions (e.g. VideoRoPE's t/h/w); a plain sequence's 1-D
  positions are repeated on every row. Plain batches keep [T].
- `embeds` (mask [T] bool, rows [M, d]): row j replaces the input embedding of the j-th masked token.
- `gate` [T] int64: a per-token modality id that picks the MoE router (0 = text, the default).
Prefix caching stays exact: a media placeholder token is cached under (token id, media digest), so two
prompts share KV only where their tokens and their media are the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class PromptInputs(Protocol):
    """What a multimodal model's `prepare_prompt` returns for one prompt of L tokens."""

    media_mask: torch.Tensor | None  # (L,) bool: placeholder tokens filled by media rows

    def forward_args(self, start: int, end: int) -> dict[str, Any]:
        """`forward` keywords for tokens [start, end) of the sequence (past L: generated tokens):
        {"positions": [P, n] | [n], "embeds": (mask [n], rows) | None, "gate": [n] | None}."""
        ...


@dataclass(frozen=True)
class MediaInputs:
    """A request's media as the model's `prepare_prompt` takes them (processor tensors, by name).

    `digest` identifies the media content for prefix caching; by default a SHA-256 of the tensors.
    """

    tensors: Mapping[str, Any]
    digest: str = field(default="")

    def content_digest(self) -> str:
        if self.digest:
            return self.digest
        h = hashlib.sha256()
        for name in sorted(self.tensors):
            value = self.tensors[name]
            h.update(name.encode())
            if isinstance(value, torch.Tensor):
                t = value.detach().to("cpu").contiguous()
                h.update(str((t.dtype, tuple(t.shape))).encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            else:
                h.update(repr(value).encode())
        return h.hexdigest()


class KeyedTokens(Sequence):
    """A sequence's token ids as the block manager hashes them: media placeholder positions read
    (token id, media digest) instead of the bare id, so equal placeholders of different media never
    share cached KV. A live view: tokens appended to `ids` show through."""

    def __init__(self, ids: list[int], media_positions: frozenset[int], digest: str) -> None:
        self._ids, self._media, self._digest = ids, media_positions, digest

    def __len__(self) -> int:
        return len(self._ids)

    def _key(self, i: int) -> Hashable:
        return (self._ids[i], self._digest) if i in self._media else self._ids[i]

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._key(i) for i in range(*index.indices(len(self._ids)))]
        return self._key(index if index >= 0 else index + len(self._ids))


@dataclass(eq=False)
class MediaState:
    """What a multimodal sequence carries through the engine: its encoded prompt and cache keys."""

    prompt: PromptInputs
    digest: str
    media_positions: frozenset[int]

    @classmethod
    def of(cls, prompt: PromptInputs, digest: str) -> MediaState:
        mask = prompt.media_mask
        where = frozenset() if mask is None else frozenset(torch.nonzero(mask).flatten().tolist())
        return cls(prompt, digest, where)

    def keyed(self, ids: list[int]) -> Sequence[Hashable]:
        return KeyedTokens(ids, self.media_positions, self.digest) if self.media_positions else ids


def merge_forward_args(
    parts: Sequence[tuple[int, int, PromptInputs | None]], device: torch.device
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Per sequence (start, end, inputs or None) in batch order -> (positions, extra forward keywords).

    Without any multimodal sequence: 1-D positions and no keywords (the plain text call).
    """
    if all(inputs is None for _, _, inputs in parts):  # the common case: plain 1-D positions
        flat = [p for start, end, _ in parts for p in range(start, end)]
        return torch.tensor(flat, dtype=torch.long, device=device), {}
    spans = [torch.arange(start, end, device=device) for start, end, _ in parts]
    args = [None if inputs is None else inputs.forward_args(start, end) for start, end, inputs in parts]
    rows = max(_rows(a["positions"]) for a in args if a is not None)
    positions, masks, media, gates = [], [], [], []
    any_embeds = any_gate = False
    for span, a in zip(spans, args, strict=True):
        n = span.shape[0]
        pos = span if a is None else a["positions"].to(device)
        positions.append(pos[None, :].expand(rows, -1) if pos.dim() == 1 else pos)
        embeds = None if a is None else a.get("embeds")
        gate = None if a is None else a.get("gate")
        if embeds is not None:
            any_embeds = True
            masks.append(embeds[0].to(device))
            media.append(embeds[1])
        else:
            masks.append(torch.zeros(n, dtype=torch.bool, device=device))
        if gate is not None:
            any_gate = True
            gates.append(gate.to(device))
        else:
            gates.append(torch.zeros(n, dtype=torch.long, device=device))
    extra: dict[str, Any] = {}
    if any_embeds:
        extra["embeds"] = (torch.cat(masks), torch.cat(media).to(device))
    if any_gate:
        extra["gate"] = torch.cat(gates)
    merged = torch.cat(positions, dim=1)  # (rows, T)
    return (merged[0] if rows == 1 else merged), extra


def _rows(positions: torch.Tensor) -> int:
    return 1 if positions.dim() == 1 else int(positions.shape[0])
