"""Mixture of experts: top-k routing -> dispatch (group tokens by expert) -> expert GEMMs -> combine.

Legend: T = tokens, H = hidden, E = experts, K = experts per token, G = expert groups, I = expert width.
Expert weights are stacked: `w13` [E, 2I, H] (gate rows then up rows), `w2` [E, H, I]. The checkpoint
stores them per expert (`experts.{e}.gate_proj.weight` ...); `FusedExperts.weight_targets` maps each of
those keys onto its slice, so the loader fills the stacks in place.
Split over ranks (engine.parallel), each rank holds E/N whole experts (expert parallel: it runs only
the pairs routed to them) or every expert's I/N width (tensor parallel); either way its output is a
partial sum the MoE block all-reduces. Routing is replicated, so every rank agrees on the choice.
Routing runs in float32: scores (sigmoid or softmax) + selection-only bias -> optional group limit ->
top-k -> weights from the unbiased scores, renormalised when K > 1, times the routed scaling factor.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from engine.config import MoEConfig
from engine.fp8 import FP8_DTYPE, fp8_linear
from engine.int8 import int8_linear, int8_parameters
from engine.layers.base import param
from engine.layers.matvec import linear, use_reduction
from engine.loader import Shard, WeightTarget
from engine.parallel.group import current_group
from engine.parallel.split import even_part

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")
# Padded bmm pays for the busiest expert's padding; past ~64 pairs per expert (prefill) the per-expert
# GEMMs are large enough that their loop costs nothing and padding would be pure waste.
_BMM_MAX_PAIRS_PER_EXPERT = 64
_BMM_MAX_PADDING = 1.5  # padded rows / real rows above which per-expert GEMMs are cheaper


def select_experts(
    logits: torch.Tensor, bias: torch.Tensor | None, cfg: MoEConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] (float32) -> (weights [T, K] float32, expert ids [T, K] int64)."""
    scores = logits.sigmoid() if cfg.score_function == "sigmoid" else logits.softmax(-1)
    choice = scores if bias is None else scores + bias  # the bias steers selection only
    if cfg.grouped:
        choice = _limit_groups(choice, cfg, summed=bias is not None or cfg.score_function == "sigmoid")
    ids = choice.topk(cfg.top_k, dim=-1).indices  # (T, K)
    weights = scores.gather(1, ids)  # (T, K)
    if cfg.norm_topk_prob and cfg.top_k > 1:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * cfg.routed_scaling_factor, ids


def _limit_groups(choice: torch.Tensor, cfg: MoEConfig, summed: bool) -> torch.Tensor:
    """Keep the `topk_group` best of G groups (score: sum of its top-2, or its max) and mask the rest."""
    t, e = choice.shape
    grouped = choice.view(t, cfg.n_group, e // cfg.n_group)  # (T, G, E/G)
    if summed:
        group_score = grouped.topk(min(2, e // cfg.n_group), dim=-1).values.sum(-1)  # (T, G)
    else:
        group_score = grouped.amax(-1)  # (T, G)
    keep = group_score.topk(cfg.topk_group, dim=-1).indices  # (T, kg)
    group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)  # (T, G)
    expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(t, e)  # (T, E)
    return choice.masked_fill(~expert_mask, float("-inf"))


class Router(nn.Module):
    """Checkpoint names: `weight` [E, H] (float32) and, when enabled, `expert_bias` [E] (float32)."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.weight = param(cfg.num_experts, cfg.hidden_size, keep_fp32=True)
        self.expert_bias = param(cfg.num_experts, keep_fp32=True) if cfg.expert_bias else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = linear(x.float(), self.weight.float())  # (T, E), always float32
        return select_experts(logits, self.expert_bias, self.cfg)


def route_by_gate(
    x: torch.Tensor, routers: list[Router], gate: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Several routers over the same experts (a multi-router, e.g. Ming's text / image / audio gates):
    token t is routed by `routers[gate[t]]`; `gate` None (text-only prefill, every decode step) uses
    routers[0] for all. Routing is per token, so running each router on its own tokens gives what
    running every router on every token and picking would, for less work."""
    if gate is None or not bool(gate.any()):
        return routers[0](x)
    t, k = x.shape[0], routers[0].cfg.top_k
    weights = torch.empty(t, k, dtype=torch.float32, device=x.device)
    ids = torch.empty(t, k, dtype=torch.long, device=x.device)
    for g in gate.unique().tolist():
        rows = (gate == g).nonzero()[:, 0]  # (T_g,)
        w, i = routers[g](x[rows])
        weights[rows], ids[rows] = w, i
    return weights, ids


class FusedExperts(nn.Module):
    """E SwiGLU experts stored as stacks. Dispatch picks the cheapest grouped form for the step:
    CUDA bf16 -> torch's grouped GEMM; on CPU a decode-sized batch (2..64 pairs per expert) whose
    routing is balanced enough (padding <= 1.5x) -> two padded batched GEMMs; otherwise one GEMM pair
    per active expert. No per-token Python loops; `forward_native` is the readable twin."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        group = current_group()
        e, i, h = cfg.num_experts, cfg.intermediate_size, cfg.hidden_size
        self.total_experts, self.hidden_size, self.full_width = e, h, i
        self.first_expert, self.width_start = 0, 0
        if group.size > 1 and group.expert_parallel:  # whole experts, E/N of them
            self.first_expert, e = even_part(e, group.size, group.rank, "num_experts")
        elif group.size > 1:  # every expert, I/N of its width
            self.width_start, i = even_part(i, group.size, group.rank, "moe_intermediate_size")
        self.num_experts, self.intermediate_size = e, i
        self.w13 = param(e, 2 * i, h)
        self.w2 = param(e, h, i)
        self.fp8_block: tuple[int, int] | None = None
        self.int8 = False

    def fp8_aligned(self, block: tuple[int, int]) -> bool:
        """Whole FP8 blocks in every expert matrix this rank holds (so the scales stack too)."""
        sizes = (self.intermediate_size, self.hidden_size, self.width_start)
        return all(n % b == 0 for n in sizes for b in block)

    def keep_fp8(self, block: tuple[int, int]) -> None:
        """Hold the experts as float8 with their block scales (s13 [E, 2I/bo, H/bi], s2 [E, H/bo, I/bi])
        instead of the compute dtype; each expert's matrices are used through `fp8_linear`."""
        (e, i, h), (bo, bi) = (self.num_experts, self.intermediate_size, self.hidden_size), block
        self.w13, self.s13 = (
            param(e, 2 * i, h, dtype=FP8_DTYPE),
            param(e, 2 * i // bo, h // bi, dtype=torch.float32),
        )
        self.w2, self.s2 = param(e, h, i, dtype=FP8_DTYPE), param(e, h // bo, i // bi, dtype=torch.float32)
        self.fp8_block = block

    def quantize_int8(self) -> None:
        """After loading: both stacks as int8 with a float32 scale per output row of each expert
        (w13_scale [E, 2I], w2_scale [E, H]; engine.int8)."""
        for name in ("w13", "w2"):
            q, scale = int8_parameters(getattr(self, name))
            setattr(self, name, q)
            setattr(self, f"{name}_scale", scale)
        self.int8 = True

    def weight_targets(self, prefix: str) -> dict[str, WeightTarget]:
        """Checkpoint key -> destination slice for every per-expert weight (after materialize);
        experts another rank holds are expected keys with no destination."""
        i, h, full = self.intermediate_size, self.hidden_size, self.full_width
        rows = None if i == full else Shard(0, ((self.width_start, i),))
        cols = None if i == full else Shard(1, ((self.width_start, i),))
        targets = {}
        for e in range(self.total_experts):
            local = e - self.first_expert
            mine = 0 <= local < self.num_experts
            views = (self.w13[local, :i], self.w13[local, i:], self.w2[local]) if mine else (None,) * 3
            for name, shape, view, shard in zip(
                ("gate_proj", "up_proj", "down_proj"),
                ((full, h), (full, h), (h, full)),
                views,
                (rows, rows, cols),
                strict=True,
            ):
                targets[f"{prefix}.{e}.{name}.weight"] = WeightTarget(view, shape, shard, self)
            if self.fp8_block is not None:
                targets.update(self._scale_targets(f"{prefix}.{e}", local if mine else None))
        return targets

    def _scale_targets(self, prefix: str, local: int | None) -> dict[str, WeightTarget]:
        """The FP8 scales of one expert (kept FP8): the blocks of this rank's width, or none (EP)."""
        (bo, bi), i, h, full = self.fp8_block, self.intermediate_size, self.hidden_size, self.full_width
        rows = None if i == full else Shard(0, ((self.width_start // bo, i // bo),))
        cols = None if i == full else Shard(1, ((self.width_start // bi, i // bi),))
        mine = local is not None
        return {
            f"{prefix}.gate_proj.weight_scale_inv": WeightTarget(
                self.s13[local, : i // bo] if mine else None, (-(-full // bo), -(-h // bi)), rows, self
            ),
            f"{prefix}.up_proj.weight_scale_inv": WeightTarget(
                self.s13[local, i // bo :] if mine else None, (-(-full // bo), -(-h // bi)), rows, self
            ),
            f"{prefix}.down_proj.weight_scale_inv": WeightTarget(
                self.s2[local] if mine else None, (-(-h // bo), -(-full // bi)), cols, self
            ),
        }

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x [T, H], weights/ids [T, K] -> [T, H]: group (token, slot) pairs by expert, run, combine.
        Split over ranks the result is this rank's partial sum (its experts, or its width of each)."""
        if self.num_experts != self.total_experts:
            return self._forward_own_experts(x, weights, ids)
        if use_reduction(x) and self.fp8_block is None:  # a compiled decode step (engine.layers.matvec)
            return self.forward_gathered(x, weights, ids)
        t, k = ids.shape
        flat = ids.reshape(-1)  # (T*K,)
        order = flat.argsort(stable=True)  # (T*K,) pair indices grouped by expert
        xs = x[order // k]  # (T*K, H) token of each sorted pair
        counts = torch.bincount(flat, minlength=self.num_experts)  # (E,)
        if x.is_cuda and x.dtype == torch.bfloat16 and _HAS_GROUPED_MM and self._plain:
            out = self._grouped_gemm(xs, counts)
        else:
            per_expert = counts.tolist()
            if self._plain and self._padding_pays(per_expert, t * k):
                out = self._padded_bmm(xs, flat[order], counts, max(per_expert))
            else:
                out = self._per_expert(xs, per_expert)
        unsorted = torch.empty_like(out)
        unsorted[order] = out  # (T*K, H) back in (token, slot) order
        weighted = unsorted.view(t, k, -1) * weights[:, :, None].to(out.dtype)  # (T, K, H)
        return weighted.sum(1)  # (T, H)

    def _forward_own_experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Expert parallel: only the (token, slot) pairs routed to this rank's experts, combined by
        scatter-add into a zero [T, H] (the other ranks' pairs arrive with the all-reduce)."""
        k = ids.shape[1]
        local = ids.reshape(-1) - self.first_expert  # (T*K,)
        pairs = ((local >= 0) & (local < self.num_experts)).nonzero()[:, 0]  # (P,) pairs held here
        out = torch.zeros_like(x)
        if pairs.numel() == 0:
            return out
        expert = local[pairs]
        order = expert.argsort(stable=True)  # (P,)
        pairs, expert = pairs[order], expert[order]
        counts = torch.bincount(expert, minlength=self.num_experts)  # (E_local,)
        xs = x[pairs // k]  # (P, H)
        if x.is_cuda and x.dtype == torch.bfloat16 and _HAS_GROUPED_MM and self._plain:
            ys = self._grouped_gemm(xs, counts)
        else:
            ys = self._per_expert(xs, counts.tolist())
        w = weights.reshape(-1)[pairs].to(ys.dtype)  # (P,)
        return out.index_add_(0, pairs // k, ys * w[:, None])

    @property
    def _plain(self) -> bool:
        """Weights held in the compute dtype (not FP8 or int8): the batched GEMM forms apply."""
        return self.fp8_block is None and not self.int8

    def _padding_pays(self, counts: list[int], pairs: int) -> bool:
        """Padded bmm when most experts are busy with few tokens each and padding wastes little."""
        e = self.num_experts
        if not 2 * e <= pairs < _BMM_MAX_PAIRS_PER_EXPERT * e:
            return False
        return e * max(counts) <= _BMM_MAX_PADDING * pairs

    def _per_expert(self, xs: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """One GEMM pair per expert that got tokens, over its contiguous slice (few tokens per step)."""
        out = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts):
            if n:
                out[start : start + n] = self._expert(e, xs[start : start + n])
                start += n
        return out

    def _padded_bmm(
        self, xs: torch.Tensor, expert: torch.Tensor, counts: torch.Tensor, cap: int
    ) -> torch.Tensor:
        """Scatter the pairs into [E, C, H] (C = busiest expert's count), then two batched GEMMs."""
        e = self.num_experts
        starts = counts.cumsum(0) - counts  # (E,) first sorted pair of each expert
        slot = torch.arange(xs.shape[0], device=xs.device) - starts[expert]  # (T*K,) row within its expert
        padded = xs.new_zeros(e, cap, xs.shape[1])  # (E, C, H)
        padded[expert, slot] = xs
        gate, up = torch.bmm(padded, self.w13.transpose(1, 2)).chunk(2, dim=-1)  # (E, C, I) each
        down = torch.bmm(F.silu(gate) * up, self.w2.transpose(1, 2))  # (E, C, H)
        return down[expert, slot]  # (T*K, H)

    def _grouped_gemm(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """CUDA bf16: torch's grouped GEMM over the expert-sorted pairs (no host sync, no padding)."""
        offs = counts.cumsum(0).to(torch.int32)  # (E,) end row of each expert's group
        gate, up = torch._grouped_mm(xs, self.w13.transpose(1, 2), offs=offs).chunk(
            2, dim=-1
        )  # (T*K, I) each
        return torch._grouped_mm(F.silu(gate) * up, self.w2.transpose(1, 2), offs=offs)  # (T*K, H)

    def forward_gathered(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Every (token, slot) pair reads its expert's matrices straight from the stacks, as products
        in reduction form: no sort, no host sync, only the K experts each token hit. Compiled, the
        indexing becomes the loads of the reductions; eager it would copy the matrices (tests only)."""
        w13, w2 = self.w13[ids].to(x.dtype), self.w2[ids].to(x.dtype)  # int8 -> dtype in the loads
        g = (w13 * x[:, None, None, :]).sum(-1)  # (T, K, 2I)
        if self.int8:
            g = g * self.w13_scale[ids].to(x.dtype)
        gate, up = g.chunk(2, dim=-1)  # (T, K, I) each
        y = (w2 * (F.silu(gate) * up)[:, :, None, :]).sum(-1)  # (T, K, H)
        if self.int8:
            y = y * self.w2_scale[ids].to(x.dtype)
        return (y * weights[:, :, None].to(y.dtype)).sum(1)  # (T, H)

    def forward_native(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Readable twin: loop over tokens and their K experts."""
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for w, e in zip(weights[t].tolist(), ids[t].tolist(), strict=True):
                out[t] += w * self._expert(e, x[t : t + 1])[0]
        return out

    def _expert(self, e: int, xs: torch.Tensor) -> torch.Tensor:
        if self.int8:
            gate, up = int8_linear(xs, self.w13[e], self.w13_scale[e]).chunk(2, dim=-1)
            return int8_linear(F.silu(gate) * up, self.w2[e], self.w2_scale[e])
        if self.fp8_block is not None:  # FP8 kept: each matrix through the block-scaled FP8 product
            gate, up = fp8_linear(xs, self.w13[e], self.s13[e], self.fp8_block).chunk(2, dim=-1)
            return fp8_linear(F.silu(gate) * up, self.w2[e], self.s2[e], self.fp8_block)
        gate, up = F.linear(xs, self.w13[e]).chunk(2, dim=-1)  # (n, I) each
        return F.linear(F.silu(gate) * up, self.w2[e])  # (n, H)
