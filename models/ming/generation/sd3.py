"""Ming Preview image DiT (dit_type "sd3"): diffusers' SD3 transformer + refiners, reference latent, 3-D RoPE.

`MingSD3Transformer` is the stock `SD3Transformer2DModel` with what upstream Ming's vendored copy
(`diffusion/sd3_transformer.py` + `mm_rope.py`, identical at e58533d Preview and 2a0c02a 2.0) adds on
the `use_refiner=True, use_qwpe=True` path both pass: the noisy latent's patch tokens pass
`noise_refiner` (2 adaLN-Zero single-stream blocks); an optional reference latent gets its own patch
embedding `ref_pos_embed` and `ref_image_refiner` and is appended to the image tokens ([T image,
T reference]); every joint attention rotates q / k by a 3-D RoPE over [image, (reference,) caption]
tokens. Only the first T tokens are decoded. (v1.5's copy, f542163, has the same tensors but no RoPE:
this forward is not v1.5's.) `SD3Variant` holds the Preview sampling rules (upstream
`pipeline_stable_diffusion_3.py`, `sd3_loss.py`).
Legend: N = DiT rows, k = images of a request, C = latent channels, h / w = latent size,
T = image tokens (h/p · w/p), L = caption tokens, J = caption width, D = DiT width, P = pooled width,
H = heads, d = head width, R = rotary pairs (d / 2).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, SD35AdaLayerNormZeroX
from diffusers.models.transformers.transformer_sd3 import SD3SingleTransformerBlock
from torch import nn

from engine.errors import CheckpointError
from models.ming.generation.condition import GenerationHeads
from models.ming.generation.denoise import DenoiseJob, shift_mu, split_by_branch

ROPE_AXES = (20, 22, 22)  # channels per head for (frame, row, column); upstream hard-codes them
ROPE_THETA = 10000
REFINER_LAYERS = 2  # upstream builds 2 per refiner whatever config num_refiner_layers says


@lru_cache(maxsize=32)
def joint_rope(frames: int, rows: int, cols: int, text: int, max_index: int) -> torch.Tensor:
    """Rotary factors (frames·rows·cols + text, R) complex64, on the CPU (as upstream computes them).

    Image token (f, r, c) sits at frame f, row r - (rows - rows//2), column c - (cols - cols//2) (the
    grid centred on 0); caption token i at max(rows//2, cols//2) + i on all three axes.
    """
    lowest = max(rows - rows // 2, cols - cols // 2)
    first_text = max(rows // 2, cols // 2)
    if lowest > max_index or first_text + text > max_index:
        raise ValueError(f"{rows}x{cols} tokens + {text} caption tokens exceed rope_max_index {max_index}")
    f, r, c = torch.meshgrid(
        torch.arange(frames),
        torch.arange(rows) - (rows - rows // 2),
        torch.arange(cols) - (cols - cols // 2),
        indexing="ij",
    )  # each (frames, rows, cols)
    image = [f.flatten(), r.flatten(), c.flatten()]  # 3 x (frames·rows·cols,)
    caption = torch.arange(text) + first_text  # (text,)
    axes = [torch.cat([pos, caption]) for pos in image]  # 3 x (frames·rows·cols + text,)
    return torch.cat([_axis_rope(pos, dim) for pos, dim in zip(axes, ROPE_AXES, strict=True)], dim=1)


def _axis_rope(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Integer positions (S,) -> e^(i·pos·θ^(-2j/dim)) (S, dim/2) complex64."""
    inv_freq = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    angles = positions.float()[:, None] * inv_freq[None]  # (S, dim/2)
    return torch.polar(torch.ones_like(angles), angles)


def rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x (N, H, S, d) with channel pairs (2j, 2j+1) as complex numbers, times rope (S, R); same dtype out."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (N, H, S, R)
    return torch.view_as_real(pairs * rope).flatten(-2).type_as(x)  # (N, H, S, d)


class RotaryJointAttnProcessor:
    """SD3 joint attention (image tokens, then caption tokens, one softmax) with the 3-D RoPE on q and k.

    The same computation as diffusers' `JointAttnProcessor2_0` plus the rotation, applied after the q / k
    norms to the concatenated sequence. A rope longer than the sequence (a dual-attention block's
    image-only `attn2`) is cut to it, as upstream does. Without a rope it is plain joint attention.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ):
        t = hidden_states.shape[1]
        q, k, v = (_heads(attn, proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        q, k = _norm(attn.norm_q, q), _norm(attn.norm_k, k)  # each (N, H, T, d)
        if encoder_hidden_states is not None:
            projs = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            ctx = [_heads(attn, proj(encoder_hidden_states)) for proj in projs]  # each (N, H, L, d)
            ctx[0], ctx[1] = _norm(attn.norm_added_q, ctx[0]), _norm(attn.norm_added_k, ctx[1])
            q, k, v = (torch.cat([a, b], dim=2) for a, b in zip((q, k, v), ctx, strict=True))  # (N,H,T+L,d)
        if image_rotary_emb is not None:
            rope = image_rotary_emb[: q.shape[2]].to(q.device)  # (S, R)
            q, k = rotate(q, rope), rotate(k, rope)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)  # (N, H, S, d)
        out = out.transpose(1, 2).flatten(2).to(q.dtype)  # (N, S, H·d)
        image = attn.to_out[1](attn.to_out[0](out[:, :t]))  # (N, T, D)
        if encoder_hidden_states is None:
            return image
        caption = out[:, t:]  # (N, L, D)
        return image, (caption if attn.context_pre_only else attn.to_add_out(caption))


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    n, s, _ = x.shape
    return x.view(n, s, attn.heads, -1).transpose(1, 2)  # (N, S, D) -> (N, H, S, d)


def _norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


def _row_by_row(forward):
    """forward(a [N, ...], b [N, ...], ...) computed as N calls on rows [1, ...], concatenated."""

    def rows(*args: torch.Tensor) -> torch.Tensor:
        return torch.cat([forward(*(a[i : i + 1] for a in args)) for i in range(args[0].shape[0])])

    return rows


class MingSD3Transformer(SD3Transformer2DModel):
    """`SD3Transformer2DModel` + `ref_pos_embed`, `noise_refiner`, `ref_image_refiner` (diffusers'
    `SD3SingleTransformerBlock`, as upstream) and the RoPE processor; config keys as upstream saves them.

    Layers with one input row per image rather than per token (time + pooled embedding, every adaLN
    modulation, the patch-embedding convolutions) run one image at a time, so an image never depends on
    how many others share its forward (see `zimage.MingZImageTransformer`).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 18,
        num_refiner_layers: int = 2,
        attention_head_dim: int = 64,
        num_attention_heads: int = 18,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int = 16,
        pos_embed_max_size: int = 96,
        dual_attention_layers: tuple[int, ...] = (),
        qk_norm: str | None = None,
        vae_ref_channel_cat: bool = False,
        directvlm_attention_dim: int = 2048,
        rope_max_index: int = 1024,
    ) -> None:
        if vae_ref_channel_cat:
            raise ValueError(
                "transformer config vae_ref_channel_cat=true is not supported (nor runnable upstream)"
            )
        if attention_head_dim != sum(ROPE_AXES):
            raise ValueError(f"transformer config attention_head_dim must be {sum(ROPE_AXES)} (3-D RoPE axes "
                             f"{ROPE_AXES}), got {attention_head_dim}")  # fmt: skip
        super().__init__(
            sample_size=sample_size, patch_size=patch_size, in_channels=in_channels, num_layers=num_layers,
            attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim, caption_projection_dim=caption_projection_dim,
            pooled_projection_dim=pooled_projection_dim, out_channels=out_channels,
            pos_embed_max_size=pos_embed_max_size, dual_attention_layers=tuple(dual_attention_layers),
            qk_norm=qk_norm,
        )  # fmt: skip
        self.ref_pos_embed = type(self.pos_embed)(
            height=sample_size, width=sample_size, patch_size=patch_size, in_channels=in_channels,
            embed_dim=self.inner_dim, pos_embed_max_size=pos_embed_max_size,
        )  # fmt: skip
        dims = (self.inner_dim, num_attention_heads, attention_head_dim)
        self.noise_refiner = nn.ModuleList(SD3SingleTransformerBlock(*dims) for _ in range(REFINER_LAYERS))
        self.ref_image_refiner = nn.ModuleList(
            SD3SingleTransformerBlock(*dims) for _ in range(REFINER_LAYERS)
        )
        self.set_attn_processor(RotaryJointAttnProcessor())
        self._per_image_layers_by_row()

    def _per_image_layers_by_row(self) -> None:
        for module in (self.time_text_embed, self.pos_embed, self.ref_pos_embed):
            module.forward = _row_by_row(module.forward)
        for module in self.modules():
            if isinstance(module, AdaLayerNormZero | SD35AdaLayerNormZeroX | AdaLayerNormContinuous):
                module.linear.forward = _row_by_row(module.linear.forward)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        ref_hidden_states: torch.Tensor | None = None,
        joint_attention_kwargs: dict | None = None,
        return_dict: bool = True,
    ):
        """hidden_states (N, C, h, w), encoder_hidden_states (N, L, J), pooled_projections (N, P),
        timestep (N,), ref_hidden_states (N, C, h, w) or None -> (N, C, h, w) (a tuple or an output)."""
        _, _, h, w = hidden_states.shape
        p = self.config.patch_size
        temb = self.time_text_embed(timestep, pooled_projections)  # (N, D)
        context = self.context_embedder(encoder_hidden_states)  # (N, L, D)
        x = self._refined(self.pos_embed, self.noise_refiner, hidden_states, temb)  # (N, T, D)
        image_tokens = x.shape[1]
        if ref_hidden_states is not None:
            if ref_hidden_states.shape != hidden_states.shape:
                raise ValueError(
                    f"reference {tuple(ref_hidden_states.shape)} is not {tuple(hidden_states.shape)}"
                )
            ref = self._refined(self.ref_pos_embed, self.ref_image_refiner, ref_hidden_states, temb)
            x = torch.cat([x, ref], dim=1)  # (N, T, D) + (N, T, D) -> (N, 2T, D)
        frames = 1 if ref_hidden_states is None else 2
        rope = joint_rope(frames, h // p, w // p, context.shape[1], self.config.rope_max_index)  # (fT + L, R)
        kwargs = {**(joint_attention_kwargs or {}), "image_rotary_emb": rope.to(x.device)}
        for block in self.transformer_blocks:  # (N, fT, D), (N, L, D)
            context, x = block(x, context, temb, joint_attention_kwargs=kwargs)
        x = self.proj_out(self.norm_out(x[:, :image_tokens], temb))  # (N, T, p·p·C)
        x = x.reshape(x.shape[0], h // p, w // p, p, p, self.out_channels)  # (N, h/p, w/p, p, p, C)
        out = x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], self.out_channels, h, w)  # (N, C, h, w)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    @staticmethod
    def _refined(embed: nn.Module, refiner: nn.ModuleList, latents: torch.Tensor, temb: torch.Tensor):
        x = embed(latents)  # (N, C, h, w) -> (N, T, D), with the sin-cos position table
        for block in refiner:
            x = block(x, temb)
        return x


def pooled_projection(caption: torch.Tensor, width: int) -> torch.Tensor:
    """Caption features (L, J) -> (P,): upstream `SD3Model_withMLP`'s pooled input, the mean over tokens
    then 1-D adaptive average pooling of the J-vector to P (upstream hard-codes P = 2048; the DiT's
    pooled_projection_dim is the width its text_embedder takes, so upstream only runs when they agree)."""
    mean = F.adaptive_avg_pool1d(caption.T[None], 1)  # (1, J, 1)
    return F.adaptive_avg_pool1d(mean[:, :, 0], width)[0]  # (P,)


def sd3_timesteps(scheduler, steps: int, latent_hw: tuple[int, int], patch: int = 2) -> None:
    """Set `scheduler`'s timesteps as the vendored pipeline does: with use_dynamic_shifting, mu of the
    token count; otherwise the static shift. (The pipeline's max_shift fallback 1.16 is never used: a
    scheduler's config always holds max_shift, its own default being 1.15.)"""
    cfg = scheduler.config
    if not cfg.get("use_dynamic_shifting"):
        scheduler.set_timesteps(steps)
        return
    mu = shift_mu(
        (latent_hw[0] // patch) * (latent_hw[1] // patch),
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", 1.16),
    )
    scheduler.set_timesteps(steps, mu=mu)


class SD3Variant:
    """The Preview sampling rules for `denoise.denoise_step` (upstream's vendored SD3 pipeline, 2.0 fixes).

    Branches per image, in upstream's batch order: no guidance (g <= 1) -> [prompt]; CFG -> [uncond,
    prompt]; CFG with a reference and image guidance > 1 -> [uncond + zero ref, uncond + ref, prompt +
    zero ref, prompt + ref]. Every branch with a reference slot carries one (the latent or zeros). Each
    branch's pooled input comes from its own caption features (so uncond's is pool(mlp(0)), not zeros).
    The DiT's time input is the scheduler's t as it is; the scheduler steps on the guided prediction.
    """

    dit_class = MingSD3Transformer

    def __init__(self, dit: MingSD3Transformer, heads: GenerationHeads) -> None:
        width = heads.config.condition_dim if heads.mlp is None else heads.mlp.fc2.out_features
        if width != dit.config.joint_attention_dim:
            raise CheckpointError(
                f"the condition MLP gives {width}-wide caption features, but transformer/config.json "
                f"joint_attention_dim is {dit.config.joint_attention_dim}"
            )
        self.dit, self.heads = dit, heads

    def set_timesteps(self, scheduler, steps: int, latent_hw: tuple[int, int]) -> None:
        sd3_timesteps(scheduler, steps, latent_hw, self.dit.config.patch_size)

    def captions(self, condition: torch.Tensor, negative: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """DenoiseJob fields from a condition [L, c]: caption features of it and of the negative condition
        (zeros unless the request has a negative prompt; it must have the condition's shape: upstream
        stacks them in one batch)."""
        neg = torch.zeros_like(condition) if negative is None else negative
        if neg.shape != condition.shape:
            raise ValueError(f"negative condition {tuple(neg.shape)} must have the condition's shape "
                             f"{tuple(condition.shape)}")  # fmt: skip
        return {"context": self.heads.caption(condition), "uncond": self.heads.caption(neg)}

    def branches(self, job: DenoiseJob) -> int:
        if job.guidance <= 1:
            return 1
        return 4 if job.reference is not None and job.image_guidance > 1 else 2

    def branch_inputs(self, job: DenoiseJob) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(caption features (L, J), reference (C, h, w) or None) of each branch, in upstream's order."""
        ref, cond, uncond = job.reference, job.context, job.uncond
        n = self.branches(job)
        if n == 1:
            return [(cond, ref)]
        if n == 2:
            return [(uncond, ref), (cond, ref)]
        zero = torch.zeros_like(ref)
        return [(uncond, zero), (uncond, ref), (cond, zero), (cond, ref)]

    def dit_inputs(self, jobs: list[DenoiseJob]) -> dict[str, torch.Tensor | None]:
        """The DiT's keyword inputs over all jobs' images, branch-major (every job's branch 0, then every
        job's branch 1, ...: upstream's order for a batch of requests)."""
        dtype, width = self.dit.dtype, self.dit.config.pooled_projection_dim
        per_job = [self.branch_inputs(j) for j in jobs]
        xs, ts, caps, pools, refs = [], [], [], [], []
        for branch in range(max(len(b) for b in per_job)):
            for job, inputs in zip(jobs, per_job, strict=True):
                if branch >= len(inputs):
                    continue
                cap, ref = inputs[branch]
                k = job.latents.shape[0]
                xs.append(job.latents)  # (k, C, h, w)
                ts.append(job.timestep.expand(k))
                caps.append(cap.expand(k, *cap.shape))  # (k, L, J)
                pools.append(pooled_projection(cap, width).expand(k, width))  # (k, P)
                refs.append(None if ref is None else ref.expand(k, *ref.shape))  # (k, C, h, w)
        has_ref = refs[0] is not None
        return {
            "hidden_states": torch.cat(xs).to(dtype),  # (N, C, h, w)
            "timestep": torch.cat(ts).to(xs[0].device),  # (N,)
            "encoder_hidden_states": torch.cat(caps).to(dtype),  # (N, L, J)
            "pooled_projections": torch.cat(pools).to(dtype),  # (N, P)
            "ref_hidden_states": torch.cat(refs).to(dtype) if has_ref else None,  # (N, C, h, w)
        }

    def forward(self, jobs: list[DenoiseJob]) -> list[torch.Tensor]:
        flat = self.dit(**self.dit_inputs(jobs), return_dict=False)[0].float()  # (N, C, h, w)
        return split_by_branch(self, jobs, flat)  # each (branches, k, C, h, w)

    def model_output(self, job: DenoiseJob, out: torch.Tensor) -> torch.Tensor:
        """The guided velocity for `scheduler.step` (cfg_mode 1 with four branches)."""
        if out.shape[0] == 1:
            return out[0]
        if out.shape[0] == 2:
            uncond, cond = out
            return uncond + job.guidance * (cond - uncond)
        uncond, image, _text, full = out
        return uncond + job.image_guidance * (image - uncond) + job.guidance * (full - image)
