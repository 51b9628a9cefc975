"""BailingMM2NativeForConditionalGeneration: the Ming-flash-omni thinker (Preview and 2.0) on the engine.

The release is config.json's own: `vision_config` names the Preview's Qwen2.5-VL ViT (`vision.py`)
or 2.0's Qwen3-VL-MoE-style ViT (`vision3.py`); the rest of the module tree is the same.
Flow: processor outputs -> `prepare_prompt` (ViT / Whisper encoders -> projectors -> L2 norm, the
3-row VideoRoPE positions and rope delta, the per-token MultiRouter gate) -> `MingPrompt` ->
`forward(ids, positions, ctx, embeds=, gate=)` -> hidden -> `compute_logits`. Decode steps are plain
text tokens at 1-D positions shifted by the prompt's rope delta.
Legend: L = prompt tokens, T = tokens in one forward, M = media tokens, N = image tokens, d = hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from engine.model_base import CausalLM
from models.ming.audio import WhisperAudioEncoder, audio_projector
from models.ming.config import MingConfig, MingVision3Config
from models.ming.language import AUDIO_GATE, IMAGE_GATE, TEXT_GATE, MingLanguageModel
from models.ming.positions import VisionTokens, position_ids
from models.ming.vision import MingVision, image_projector
from models.ming.vision3 import MingVision3


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class MingPrompt:
    """One prompt's prefill inputs (on the model's device). `forward_args(start, end)` gives the
    keyword arguments of `forward` for tokens [start, end) of the sequence: prompt tokens (a chunked
    prefill slice) and, past the prompt, generated tokens (text at 1-D positions + rope delta)."""

    ids: torch.Tensor  # (L,) int64
    positions: torch.Tensor  # (3, L) int64, rows t, h, w
    rope_delta: int  # max position + 1 - L; decode token at cache length n sits at n + rope_delta
    media_mask: torch.Tensor | None  # (L,) bool: tokens whose embedding is a media row
    media_rows: torch.Tensor | None  # (M, d) L2-normalised encoder rows, in token order
    gate: torch.Tensor | None  # (L,) int64: 0 text, 1 image/video patch, 2 audio patch; None: all 0

    def forward_args(self, start: int = 0, end: int | None = None) -> dict[str, Any]:
        """{"positions": [3, n], "embeds": (mask [n], rows [m, d]) | None, "gate": [n] | None}."""
        length = self.ids.shape[0]
        end = length if end is None else end
        if not 0 <= start <= end:
            raise ValueError(f"token range [{start}, {end}) is empty or negative")
        stop, extra = min(end, length), end - max(start, length)  # prompt part, generated tokens
        positions = self.positions[:, start:stop]  # (3, n_prompt)
        if extra > 0:
            after = torch.arange(max(start, length), end, device=positions.device) + self.rope_delta
            positions = torch.cat([positions, after[None, :].expand(3, -1)], dim=1)  # (3, n)
        embeds = gate = None
        if self.media_mask is not None:
            first, last = (int(self.media_mask[:i].sum()) for i in (start, stop))
            if last > first:
                mask = _pad(self.media_mask[start:stop], extra)  # (n,)
                embeds = (mask, self.media_rows[first:last])
        if self.gate is not None and start < length:
            gate = _pad(self.gate[start:stop], extra)  # (n,)
        return {"positions": positions, "embeds": embeds, "gate": gate}

    def decode_position(self, cache_len: int) -> int:
        """The 1-D position (all three rows) of the token at cache index `cache_len`."""
        return cache_len + self.rope_delta


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """x [k] followed by n zeros (False / the text gate) for generated tokens."""
    return torch.cat([x, x.new_zeros(max(n, 0))]) if n > 0 else x


def audio_spans(loc_lens: torch.Tensor, length: int) -> list[tuple[int, int]]:
    """`audio_placeholder_loc_lens` [1, A, 2] | [A, 2] -> [(first <audioPatch>, L)], checked to be
    in order, inside the prompt and disjoint."""
    spans = [(int(a), int(n)) for a, n in loc_lens.reshape(-1, 2).tolist()]
    end = 0
    for loc, n in spans:
        if n <= 0 or loc < end or loc + n > length:
            raise ValueError(f"audio_placeholder_loc_lens {spans} do not fit a prompt of {length} tokens")
        end = loc + n
    return spans


class BailingMM2NativeForConditionalGeneration(CausalLM):
    """The Ming thinker. Checkpoint prefixes = attribute names: `vision.`, `audio.`, `linear_proj.`,
    `linear_proj_audio.`, `model.` (`model.model.*`, `model.lm_head`).

    Engine contract (`forward(ids [T], positions, ctx, *, embeds=None, gate=None) -> hidden [T, d]`;
    without the keywords it is a plain text LM at 1-D positions):
    - Prefill: once per request, `prompt = model.prepare_prompt(input_ids, **media)` with the
      processor's tensors (`MingInputs.tensors()` minus attention_mask); the encoders run only here.
      Keep `prompt` with the sequence. For tokens [start, end) call
      `model(ids[start:end], ctx=ctx, **prompt.forward_args(start, end))`: positions [3, n],
      `embeds` (mask [n] bool, rows [m, d]) or None, `gate` [n] or None. The same call covers a
      chunked prefill, and a re-prefill of prompt + generated tokens after preemption.
    - Decode: positions [T] = cache index + that sequence's `prompt.rope_delta` (1-D, widened to
      3 equal rows; `forward_args(n, n + 1)` gives the same), no `embeds`, no `gate`: decode
      tokens use the text gate. A text-only prompt has rope_delta 0, gate None, no embeds, so the
      engine's plain call `model(ids, positions, ctx)` is already right for it.
    - Mixed batches (sequences packed along T): concatenate each sequence's arguments - positions
      [3, T] (a 1-D position repeated on 3 rows), `embeds` mask [T] (False elsewhere) with the rows
      in token order, `gate` [T] (0 elsewhere).
    """

    default_stop_strings: ClassVar[tuple[str, ...]] = ("<|role_end|>",)

    def __init__(self, cfg: MingConfig, vision_attn: str = "sdpa") -> None:
        super().__init__()
        self.config = cfg
        hidden = cfg.llm.hidden_size
        if isinstance(cfg.vision, MingVision3Config):
            self.vision: MingVision | MingVision3 = MingVision3(cfg.vision, vision_attn)
        else:
            self.vision = MingVision(cfg.vision, vision_attn)
        self.audio = WhisperAudioEncoder(cfg.audio)
        self.linear_proj = image_projector(cfg.vision.out_hidden_size, hidden)
        self.linear_proj_audio = audio_projector(cfg.audio, hidden)
        self.model = MingLanguageModel(cfg.llm)
        self.runtime = self.model.runtime

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> BailingMM2NativeForConditionalGeneration:
        return cls(MingConfig.from_dict(config))

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: Any = None,
        *,
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(ids, positions, ctx, embeds, gate)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)  # (T, V) float32

    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [P, 3·t·p·p] + grid_thw [I, 3] -> L2-normalised rows [N, d], all images in order."""
        if grid_thw is None or grid_thw.dim() != 2 or grid_thw.shape[1] != 3:
            raise ValueError("pixel values need a grid_thw of shape [images, 3]")
        patches = int(grid_thw.prod(-1).sum())
        if pixel_values.dim() != 2 or pixel_values.shape[0] != patches:
            raise ValueError(
                f"pixel_values {tuple(pixel_values.shape)} do not hold the grids' {patches} patches"
            )
        feats = self.vision.features(pixel_values, grid_thw)  # (N, out_hidden): 8192 Preview, 4096 2.0
        return l2_normalise(self.linear_proj(feats))  # (N, d)

    def encode_audio(
        self,
        feats: torch.Tensor,
        lengths: torch.Tensor | list[int],
        loc_lens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """feats [A, T_max, n_mels] (zero-padded) + lengths [A] mel frames -> rows [sum L_i, d], clip by
        clip, each clip encoded unpadded. With `loc_lens` ([1, A, 2]) each L_i must equal its span."""
        lengths = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
        if feats.dim() != 3 or len(lengths) != feats.shape[0]:
            raise ValueError(f"audio feats {tuple(feats.shape)} do not match {len(lengths)} lengths")
        weight = self.audio.conv1.weight
        out = []
        for row, n in zip(feats, lengths, strict=True):
            if not 0 < n <= feats.shape[1]:
                raise ValueError(f"audio length {n} is outside 1..{feats.shape[1]}")
            mel = row[:n].unsqueeze(0).to(weight.device, weight.dtype)  # (1, T, n_mels)
            x = self.audio(mel).transpose(1, 2)  # (1, W, T')
            x = self.linear_proj_audio(x)[0].transpose(0, 1)  # (L, d)
            out.append(l2_normalise(x) if self.config.audio.norm_query_embeds else x)
        if loc_lens is not None:
            spans = [int(n) for n in loc_lens.reshape(-1, 2)[:, 1].tolist()]
            if spans != [len(x) for x in out]:
                raise ValueError(f"audio encodes to {[len(x) for x in out]} tokens, the prompt holds {spans}")
        return torch.cat(out)  # (M, d)

    def prepare_prompt(
        self,
        input_ids: torch.Tensor,
        *,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        audio_feats: torch.Tensor | None = None,
        audio_feats_lengths: torch.Tensor | None = None,
        audio_placeholder_loc_lens: torch.Tensor | None = None,
        second_per_grid_ts: list[float] | None = None,
        query_embeds: torch.Tensor | None = None,
        query_grid_thw: torch.Tensor | None = None,
    ) -> MingPrompt:
        """One prompt (input_ids [1, L] or [L]) and its media -> `MingPrompt` (runs the encoders).

        Image generation: `query_embeds` [Σ s², d] fill the learnable query blocks appended after the
        prompt (image-patch tokens, image gate), positioned as images of grids `query_grid_thw`
        ([S, 3], one [1, 2, 2 s²] per scale) after the prompt's own images.
        """
        device = self.model.model.word_embeddings.weight.device
        ids = input_ids.reshape(-1).long().to(device)  # (L,)
        tokens = self.config.tokens
        grids = [g.tolist() if g is not None else [] for g in (image_grid_thw, video_grid_thw)]
        if query_embeds is not None:
            if query_grid_thw is None:
                raise ValueError("query_embeds need their query_grid_thw")
            grids[0] = grids[0] + query_grid_thw.tolist()
        positions, delta = position_ids(ids.tolist(), tokens, *grids, second_per_grid_ts)
        parts: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (kind, mask [L], rows [n, d])
        image_rows = [] if pixel_values is None else [self.encode_images(pixel_values, image_grid_thw)]
        if query_embeds is not None:  # after the prompt's images: the query blocks end the prompt
            dtype = self.model.model.word_embeddings.weight.dtype
            image_rows.append(query_embeds.to(device, dtype))
        if image_rows:
            parts.append(("image", ids == tokens.image_patch, torch.cat(image_rows)))
        if pixel_values_videos is not None:
            rows = self.encode_images(pixel_values_videos, video_grid_thw)
            parts.append(("video", ids == tokens.video_patch, rows))
        audio_mask = None
        if audio_feats is not None:
            if audio_placeholder_loc_lens is None or audio_feats_lengths is None:
                raise ValueError("audio_feats need audio_feats_lengths and audio_placeholder_loc_lens")
            audio_mask = torch.zeros_like(ids, dtype=torch.bool)
            for loc, n in audio_spans(audio_placeholder_loc_lens, len(ids)):
                audio_mask[loc : loc + n] = True
            rows = self.encode_audio(audio_feats, audio_feats_lengths, audio_placeholder_loc_lens)
            parts.append(("audio", audio_mask, rows))
        positions = positions.to(device)
        if not parts:
            return MingPrompt(ids, positions, delta, None, None, None)
        mask, rows = _splice(parts, len(ids))
        return MingPrompt(ids, positions, delta, mask, rows, _gate(ids, tokens, audio_mask))


def _splice(
    parts: list[tuple[str, torch.Tensor, torch.Tensor]], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each kind's rows at its placeholder tokens -> (mask [L], rows [M, d] in token order)."""
    rows0 = parts[0][2]
    mask = torch.zeros(length, dtype=torch.bool, device=rows0.device)
    dense = rows0.new_zeros(length, rows0.shape[-1])  # (L, d)
    for kind, where, rows in parts:
        if int(where.sum()) != rows.shape[0]:
            raise ValueError(
                f"the prompt has {int(where.sum())} {kind} tokens but {rows.shape[0]} {kind} embeddings"
            )
        if bool((mask & where).any()):
            raise ValueError(f"{kind} placeholder tokens overlap another medium's")
        dense[where] = rows.to(dense.dtype)
        mask |= where
    return mask, dense[mask]


def _gate(ids: torch.Tensor, tokens: VisionTokens, audio_mask: torch.Tensor | None) -> torch.Tensor:
    """The MultiRouter's per-token choice (upstream rule): image/video patch ids -> image_gate,
    then the audio spans -> audio_gate, everything else -> gate."""
    gate = torch.full_like(ids, TEXT_GATE)
    gate[(ids == tokens.image_patch) | (ids == tokens.video_patch)] = IMAGE_GATE
    if audio_mask is not None:
        gate[audio_mask] = AUDIO_GATE
    return gate
