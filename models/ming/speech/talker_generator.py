"""Offline AR generation of latent patches with `BailingTalker2` (upstream `BailingTalker2.generate` +
`CFMGraphExecutor`, without CUDA graphs or threads), for one request or several batched together.

Per step: ONE backbone call for every active request (the left-padded prefill at step 0, then each
request's previous aggregator output) -> h = last hidden -> noise drawn per request from its own
torch.Generator in upstream's order (y0 [1, P, C], then the SDE noise [S, 1, P, C]) -> CFM patch ->
aggregator embedding (the next input) and stop probabilities -> history shift -> stop rule (the
request's own step > min_new_tokens and p_stop > 0.5, or its step limit). A request's stopping patch is
part of its output, as upstream yields it. Finished requests leave the batch (their KV rows are dropped).
Continuous batching: newcomers are `start`ed and stepped once (their prefill, a batch of their own),
then `join`ed into the running batch (`talker_batching`: left-padded KV and mask; positions are per
row), so a request's patches do not depend on when it joined (to float rounding). `drop` removes
requests between steps (cancel).
Legend: B = active requests, L = padded prompt length, H = backbone hidden, P = patch frames,
Hp = history frames, C = latent width, S = ODE steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from models.ming.speech.cfm import FlowSampling, ODEStep, settings_tensor
from models.ming.speech.talker import BailingTalker2
from models.ming.speech.talker_batching import merge_caches, merge_masks, mergeable, trim_unused

MIN_NEW_TOKENS = 10  # upstream generate(min_new_token=10): no stop before step 11
MAX_STEPS = 1000  # upstream's loop bound
MAX_CACHE_LEN = 2048  # upstream's StaticCache size, which also bounds the steps: L + steps <= 2048
STOP_THRESHOLD = 0.5


@dataclass
class TalkerRequest:
    """One request's prefill (see talker_prompt.talker_inputs) and generation settings."""

    inputs_embeds: torch.Tensor  # [L, H]
    history: torch.Tensor  # [Hp, C]
    sampling: FlowSampling = field(default_factory=FlowSampling)
    # None: torch's default RNG on the model's device (as upstream). A generator on the model's device
    # reproduces upstream's draws there; a CPU generator gives the same draws on any device.
    generator: torch.Generator | None = None
    min_new_tokens: int = MIN_NEW_TOKENS
    max_steps: int = MAX_STEPS

    def __post_init__(self) -> None:
        if self.inputs_embeds.ndim != 2 or not self.inputs_embeds.shape[0]:
            raise ValueError(
                f"inputs_embeds must be [L, H] with L > 0, got {tuple(self.inputs_embeds.shape)}"
            )
        if self.history.ndim != 2:
            raise ValueError(f"history must be [Hp, C], got {tuple(self.history.shape)}")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {self.max_steps}")


@dataclass(frozen=True)
class StepNoise:
    """The random draws of one AR step for the active requests."""

    y0: torch.Tensor  # [B, P, C] initial ODE state
    sde: torch.Tensor  # [S, B, P, C] per-Euler-step SDE noise


@dataclass(frozen=True)
class TalkerStep:
    """What one AR step computed, for the requests that were active (rows in `TalkerStep.rows` order)."""

    rows: tuple[int, ...]  # request index of each row
    last_hidden_state: torch.Tensor  # [B, L or 1, H] the backbone call's output
    h: torch.Tensor  # [B, 1, H] the condition
    noise: StepNoise
    latents: torch.Tensor  # [B, P, C] the sampled patch
    next_embeds: torch.Tensor  # [B, 1, H] aggregator(latents): the next backbone input
    stop_logits: torch.Tensor  # [B, 2]
    stop_probs: torch.Tensor  # [B, 2]
    history_in: torch.Tensor  # [B, Hp, C]
    history_out: torch.Tensor  # [B, Hp, C]
    finished: tuple[bool, ...]  # per row: this patch is the request's last
    trace: list[ODEStep] | None  # every Euler step, when asked for


@dataclass
class TalkerBatch:
    """The state between steps: KV cache, masks, positions and histories of the active requests."""

    requests: list[TalkerRequest]
    rows: list[int]  # request index of each active row
    cache: DynamicCache
    attention_mask: torch.Tensor | None  # [B, L + steps] (None: no padding anywhere)
    positions: torch.Tensor  # [B, L] at step 0, then [B, 1]: the next input's positions
    pending: torch.Tensor  # [B, L, H] padded prompts at step 0, then [B, 1, H]
    history: torch.Tensor  # [B, Hp, C]
    step: int = 0
    limits: list[int] = field(default_factory=list)  # per request: the most steps it may take
    latents: list[list[torch.Tensor]] = field(default_factory=list)  # per request: its patches [P, C]
    stop_reasons: list[str | None] = field(default_factory=list)  # "stop" | "length" | "dropped"

    @property
    def done(self) -> bool:
        return not self.rows

    @property
    def pending_mask_len(self) -> int:
        """Positions the next backbone call attends over: the cache plus the pending input."""
        return self.cache.get_seq_length() + self.pending.shape[1]


def _left_pad(embeds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Prompts [L_i, H] -> (padded [B, L, H], mask [B, L] or None without padding, positions [B, L])."""
    longest = max(e.shape[0] for e in embeds)
    first = embeds[0]
    padded = first.new_zeros(len(embeds), longest, first.shape[1])  # (B, L, H)
    mask = torch.zeros(len(embeds), longest, dtype=torch.long, device=first.device)  # (B, L)
    for i, e in enumerate(embeds):
        padded[i, longest - e.shape[0] :] = e
        mask[i, longest - e.shape[0] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): 0.. from each prompt's first token
    return padded, (None if bool(mask.all()) else mask), positions


class TalkerGenerator:
    """Drives `BailingTalker2` step by step: `start` -> `step` until `done`, or `generate`."""

    def __init__(self, talker: BailingTalker2, max_cache_len: int | None = MAX_CACHE_LEN) -> None:
        self.talker, self.max_cache_len = talker, max_cache_len
        self.device = talker.model.embed_tokens.weight.device
        self.dtype = talker.model.embed_tokens.weight.dtype

    def start(self, requests: list[TalkerRequest]) -> TalkerBatch:
        """A batch ready for its first (prefill) step."""
        if not requests:
            raise ValueError("no requests")
        cfg = self.talker.config
        for i, r in enumerate(requests):
            if r.history.shape != (cfg.history_patch_size, cfg.latent_dim):
                raise ValueError(f"request {i}: history must be [{cfg.history_patch_size}, {cfg.latent_dim}]")
            if r.inputs_embeds.shape[1] != cfg.llm_hidden_size:
                raise ValueError(f"request {i}: inputs_embeds width must be {cfg.llm_hidden_size}")
        embeds = [r.inputs_embeds.to(self.device, self.dtype) for r in requests]
        padded, mask, positions = _left_pad(embeds)
        history = torch.stack([r.history.to(self.device, self.dtype) for r in requests])  # (B, Hp, C)
        limits = [self._limit(r) for r in requests]
        return TalkerBatch(
            requests=list(requests),
            rows=list(range(len(requests))),
            cache=DynamicCache(config=self.talker.backbone_config),
            attention_mask=mask,
            positions=positions,
            pending=padded,
            history=history,
            limits=limits,
            latents=[[] for _ in requests],
            stop_reasons=[None for _ in requests],
        )

    def _limit(self, request: TalkerRequest) -> int:
        if self.max_cache_len is None:
            return request.max_steps
        room = self.max_cache_len - request.inputs_embeds.shape[0]
        if room <= 0:
            raise ValueError(
                f"a prompt of {request.inputs_embeds.shape[0]} tokens leaves no room in the cache"
            )
        return min(request.max_steps, room)

    def draw_noise(self, batch: TalkerBatch) -> StepNoise:
        """Per active request, from its generator: y0 [1, P, C], then the SDE noise [S, 1, P, C]."""
        cfg = self.talker.config
        shape = (1, cfg.patch_size, cfg.latent_dim)
        y0s, sdes = [], []
        for i in batch.rows:
            gen = batch.requests[i].generator
            where = self.device if gen is None else gen.device  # drawn where the generator lives
            y0s.append(torch.randn(shape, generator=gen, device=where, dtype=self.dtype))
            sdes.append(torch.randn((cfg.steps, *shape), generator=gen, device=where, dtype=self.dtype))
        y0 = torch.cat(y0s).to(self.device)  # (B, P, C)
        return StepNoise(y0=y0, sde=torch.cat(sdes, dim=1).to(self.device))  # (S, B, P, C)

    def _check_noise(self, batch: TalkerBatch, noise: StepNoise) -> StepNoise:
        cfg = self.talker.config
        y0_shape = (len(batch.rows), cfg.patch_size, cfg.latent_dim)
        if tuple(noise.y0.shape) != y0_shape or tuple(noise.sde.shape) != (cfg.steps, *y0_shape):
            raise ValueError(
                f"noise must be y0 {list(y0_shape)} and sde {[cfg.steps, *y0_shape]}, "
                f"got {list(noise.y0.shape)} and {list(noise.sde.shape)}"
            )
        return StepNoise(noise.y0.to(self.device, self.dtype), noise.sde.to(self.device, self.dtype))

    @torch.no_grad()
    def _backbone(self, batch: TalkerBatch) -> torch.Tensor:
        """One call over every active row: [B, L or 1, H] after the final norm."""
        out = self.talker.model(
            inputs_embeds=batch.pending,
            attention_mask=batch.attention_mask,
            position_ids=batch.positions,
            cache=batch.cache,
            use_cache=True,
        )
        return out.last_hidden_state

    @torch.no_grad()
    def step(self, batch: TalkerBatch, noise: StepNoise | None = None, trace: bool = False) -> TalkerStep:
        """One AR step for every active request; `noise` replaces the draws (e.g. a golden's)."""
        if batch.done:
            raise ValueError("the batch has finished")
        noise = None if noise is None else self._check_noise(batch, noise)  # before any state changes
        return self._step([batch], [noise], trace)[0]

    @torch.no_grad()
    def step_together(self, batches: list[TalkerBatch]) -> list[TalkerStep]:
        """One AR step of several batches (a running one and newcomers in their prefill, say): each
        batch's backbone apart (their caches differ), then ONE call of the flow head, aggregator and
        stop head over all their rows, which is most of a step's cost."""
        if not batches or any(b.done for b in batches):
            raise ValueError("step_together needs batches that have not finished")
        return self._step(batches, [None] * len(batches), False)

    def _step(
        self, batches: list[TalkerBatch], noises: list[StepNoise | None], trace: bool
    ) -> list[TalkerStep]:
        hiddens = [self._backbone(b) for b in batches]
        drawn = [self.draw_noise(b) if n is None else n for b, n in zip(batches, noises, strict=True)]
        h = torch.cat([x[:, -1:] for x in hiddens])  # (B, 1, H) over every batch's rows
        history = torch.cat([b.history for b in batches])
        settings = [b.requests[i].sampling for b in batches for i in b.rows]
        args = settings_tensor(settings, self.device, self.dtype)
        y0, sde = torch.cat([n.y0 for n in drawn]), torch.cat([n.sde for n in drawn], dim=1)
        ode: list[ODEStep] | None = [] if trace else None
        latents = self.talker.sample_patch(h, history, y0, args, sde, ode)
        next_embeds = self.talker.embed_patches(latents)  # (B, 1, H)
        logits = self.talker.stop_logits(h)
        probs = logits.softmax(dim=-1)
        steps, start = [], 0
        for batch, hidden, noise in zip(batches, hiddens, drawn, strict=True):
            rows = slice(start, start + len(batch.rows))
            start = rows.stop
            history_in = batch.history
            batch.history = torch.cat([history_in[:, latents.shape[1] :], latents[rows]], dim=1)  # (B, Hp, C)
            finished = self._bookkeep(batch, latents[rows], probs[rows])
            steps.append(
                TalkerStep(
                    rows=tuple(batch.rows),
                    last_hidden_state=hidden,
                    h=h[rows],
                    noise=noise,
                    latents=latents[rows],
                    next_embeds=next_embeds[rows],
                    stop_logits=logits[rows],
                    stop_probs=probs[rows],
                    history_in=history_in,
                    history_out=batch.history,
                    finished=finished,
                    trace=ode,
                )
            )
            self._advance(batch, next_embeds[rows], finished)
        return steps

    def _bookkeep(self, batch: TalkerBatch, latents: torch.Tensor, probs: torch.Tensor) -> tuple[bool, ...]:
        """Record each row's patch and apply the stop rule; returns which rows are finished."""
        finished = []
        p_stop = probs[:, 1].tolist()
        for row, i in enumerate(batch.rows):
            request, step = batch.requests[i], len(batch.latents[i])  # this request's own step
            batch.latents[i].append(latents[row])
            if step > request.min_new_tokens and p_stop[row] > STOP_THRESHOLD:
                batch.stop_reasons[i] = "stop"
            elif step + 1 >= batch.limits[i]:
                batch.stop_reasons[i] = "length"
            finished.append(batch.stop_reasons[i] is not None)
        return tuple(finished)

    def _advance(self, batch: TalkerBatch, next_embeds: torch.Tensor, finished: tuple[bool, ...]) -> None:
        """Next inputs and positions; finished rows leave the batch (and the KV cache)."""
        batch.pending = next_embeds
        batch.positions = batch.positions[:, -1:] + 1  # (B, 1)
        if batch.attention_mask is not None:
            ones = batch.attention_mask.new_ones(batch.attention_mask.shape[0], 1)
            batch.attention_mask = torch.cat([batch.attention_mask, ones], dim=1)  # (B, L + steps)
        batch.step += 1
        self._keep_rows(batch, [row for row, f in enumerate(finished) if not f])

    def _keep_rows(self, batch: TalkerBatch, keep: list[int]) -> None:
        """Only the rows `keep` stay (KV rows dropped, unused leading cache columns cut)."""
        if len(keep) == len(batch.rows):
            return
        batch.rows = [batch.rows[row] for row in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        batch.cache.batch_select_indices(index)
        batch.pending, batch.positions, batch.history = (
            batch.pending[index],
            batch.positions[index],
            batch.history[index],
        )
        if batch.attention_mask is not None:
            batch.attention_mask = trim_unused(batch.cache, batch.attention_mask[index])

    # ---- continuous batching -----------------------------------------------------------------
    def can_join(self, batch: TalkerBatch) -> bool:
        """Whether `batch` can take part in a `join`: past its prefill, with a full-attention cache."""
        return batch.step > 0 and mergeable(batch.cache)

    def _full_mask(self, batch: TalkerBatch) -> torch.Tensor:
        """The batch's mask [B, cache + pending], all ones where it has none (no padding)."""
        if batch.attention_mask is not None:
            return batch.attention_mask
        return torch.ones(len(batch.rows), batch.pending_mask_len, dtype=torch.long, device=self.device)

    def drop(self, batch: TalkerBatch, requests: set[int]) -> None:
        """Remove the active rows of these request indices now, between steps (their KV rows go at
        once; the request objects at the next `join`, or with the batch)."""
        for i in requests:
            if i in batch.rows:
                batch.stop_reasons[i] = "dropped"
        self._keep_rows(batch, [row for row, i in enumerate(batch.rows) if i not in requests])

    def join(self, batch: TalkerBatch, newcomers: TalkerBatch) -> TalkerBatch:
        """One batch of the active requests of both, `batch`'s first: each row keeps its KV, mask,
        position and history; finished requests are left out (request indices start again at 0)."""
        if batch.done or newcomers.done:
            return newcomers if batch.done else batch
        if not (self.can_join(batch) and self.can_join(newcomers)):
            raise ValueError("both batches must be past their prefill step, with full-attention caches")
        length = max(batch.pending_mask_len, newcomers.pending_mask_len)
        mask = merge_masks(self._full_mask(batch), self._full_mask(newcomers), length)
        merge_caches(batch.cache, newcomers.cache)  # (B1 + B2, K, length - 1, D)
        merged = TalkerBatch(
            requests=[],
            rows=[],
            cache=batch.cache,
            attention_mask=mask,  # (B, length)
            positions=torch.cat([batch.positions, newcomers.positions]),  # (B, 1)
            pending=torch.cat([batch.pending, newcomers.pending]),  # (B, 1, H)
            history=torch.cat([batch.history, newcomers.history]),  # (B, Hp, C)
            step=batch.step,
        )
        for part in (batch, newcomers):
            for i in part.rows:
                merged.rows.append(len(merged.requests))
                merged.requests.append(part.requests[i])
                merged.limits.append(part.limits[i])
                merged.latents.append(part.latents[i])
                merged.stop_reasons.append(None)
        return merged

    def generate(self, requests: list[TalkerRequest]) -> list[torch.Tensor]:
        """Run every request to its end; per request its latent frames [T, C] (T = patches x P)."""
        batch = self.start(requests)
        while not batch.done:
            self.step(batch)
        return [torch.cat(patches) for patches in batch.latents]
