"""Ming-flash-omni (BailingMM2) config.json -> frozen dataclasses: `MingConfig` holds the language
model's `BailingMoeV2Config` (`llm_config`, via `ming_llm_config`), the ViT's config (`vision_config`:
the Preview's Qwen2.5-VL `MingVisionConfig` or 2.0's Qwen3-VL-MoE-style `MingVision3Config`, chosen by
`ming_version` from that section's own model_type / architectures), the Whisper encoder's
`MingAudioConfig` (`audio_config`) and the vision-block token ids (`tokens`, from `llm_config`).
Invalid values raise ValueError naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from models.ling.config import BailingMoeV2Config
from models.ming.positions import VisionTokens

# The upstream Preview ViT hard-codes the width of its merged output (`image_emb_dim`).
PREVIEW_IMAGE_EMB_DIM = 8192
# VideoRoPE's mrope_section [8, 12, 12] is hard-coded upstream: 32 frequencies = a rotary dim of 64.
VIDEO_ROPE_DIM = 64
# What the upstream Ming LLM does whatever llm_config says (spec ming_layout.md section 1).
MING_LLM_FIXED: dict[str, Any] = {
    "use_qk_norm": True,
    "moe_router_enable_expert_bias": True,
    "score_function": "sigmoid",
    "norm_topk_prob": True,
    "num_nextn_predict_layers": 0,
    "rope_scaling": None,  # video_rope: 3-row positions, applied through video_rope_rows()
}
# `vision_config.model_type` / `.architectures[0]` -> the Ming release whose thinker it describes.
PREVIEW, MING_2_0 = "preview", "2.0"
VISION_MODEL_TYPES = {"qwen2_5_vit": PREVIEW, "qwen3_moe_vit": MING_2_0}
VISION_ARCHITECTURES = {"Qwen2_5_VisionTransformer": PREVIEW, "Qwen3MoeVisionTransformer": MING_2_0}
# The Preview's vision-block ids (real Ling-2.0 tokenizer), used when llm_config omits them.
PREVIEW_TOKENS = {
    "image_start_token": 157158,
    "image_patch_token": 157157,
    "video_start_token": 157159,  # `</image>`: never precedes <framePatch>, see positions.py
    "video_patch_token": 157175,
}


def _field(d: dict[str, Any], section: str, key: str, kind: type, default: Any = None) -> Any:
    """Read `d[key]` as `kind`; a missing key without a default, or a bad value, names the field."""
    if key not in d or d[key] is None:
        if default is None:
            raise ValueError(f"config.json field '{section}.{key}' is missing")
        return default
    value = d[key]
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int and (isinstance(value, bool) or int(value) != value):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"config.json field '{section}.{key}' must be {kind.__name__}, got {value!r}"
        ) from None


def _positive(section: str, values: dict[str, int]) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"config.json field '{section}.{key}' must be positive, got {value}")


def ming_llm_config(llm_config: dict[str, Any]) -> BailingMoeV2Config:
    """`llm_config` -> BailingMoeV2Config with what the upstream code forces: q/k norm and expert_bias
    always on, sigmoid scores renormalised, `routed_scaling_factor` read (default 2.5; the config's
    `moe_router_topk_scaling_factor` is never read), VideoRoPE over a rotary dim of 64."""
    scaling = llm_config.get("rope_scaling")
    kind = scaling.get("type") or scaling.get("rope_type") if isinstance(scaling, dict) else None
    if scaling is not None and kind != "video_rope":
        raise ValueError(
            f"config.json field 'llm_config.rope_scaling' must be null or of type 'video_rope', "
            f"got {scaling!r}"
        )
    raw = {**llm_config, **MING_LLM_FIXED}
    if raw.get("routed_scaling_factor") is None:
        raw["routed_scaling_factor"] = 2.5
    cfg = BailingMoeV2Config.from_dict(raw)
    if cfg.rotary_dim != VIDEO_ROPE_DIM:
        raise ValueError(
            f"config.json field 'llm_config.partial_rotary_factor' must give a rotary dim of "
            f"{VIDEO_ROPE_DIM} (VideoRoPE sections [8, 12, 12]), got {cfg.rotary_dim}"
        )
    return cfg


def vision_tokens(llm_config: dict[str, Any], merge: int, interleaved_video: bool = False) -> VisionTokens:
    """The start / patch ids that mark image and video blocks (llm_config, Preview ids by default);
    `interleaved_video`: video frames are `<image>` + `<framePatch>` blocks (2.0's timestamps)."""
    ids = {
        key: _field(llm_config, "llm_config", key, int, default) for key, default in PREVIEW_TOKENS.items()
    }
    return VisionTokens(
        image_start=ids["image_start_token"],
        image_patch=ids["image_patch_token"],
        video_start=ids["video_start_token"],
        video_patch=ids["video_patch_token"],
        merge=merge,
        interleaved_video=interleaved_video,
    )


def ming_version(vision_config: dict[str, Any]) -> str:
    """PREVIEW or MING_2_0, from the checkpoint's own `vision_config`: its model_type (`qwen2_5_vit`,
    `qwen3_moe_vit`), else its architectures[0]; a section naming neither is the Preview's (whose
    configs were read that way before 2.0). Unknown or contradictory values raise ValueError."""
    s = "vision_config"
    model_type, archs = vision_config.get("model_type"), vision_config.get("architectures")
    if model_type is not None and model_type not in VISION_MODEL_TYPES:
        raise ValueError(
            f"config.json field '{s}.model_type' must be one of {sorted(VISION_MODEL_TYPES)}, "
            f"got {model_type!r}"
        )
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch is not None and arch not in VISION_ARCHITECTURES:
        raise ValueError(
            f"config.json field '{s}.architectures' must name one of {sorted(VISION_ARCHITECTURES)}, "
            f"got {archs!r}"
        )
    by_type, by_arch = VISION_MODEL_TYPES.get(model_type), VISION_ARCHITECTURES.get(arch)
    if by_type and by_arch and by_type != by_arch:
        raise ValueError(
            f"config.json fields '{s}.model_type' ({model_type!r}) and '{s}.architectures' ({archs!r}) "
            "name different vision transformers"
        )
    return by_type or by_arch or PREVIEW


@dataclass(frozen=True)
class MingVisionConfig:
    """`vision_config` (Preview: Qwen2.5-VL ViT, model_type `qwen2_5_vit`)."""

    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    window_size: int
    fullatt_block_indexes: tuple[int, ...]
    out_hidden_size: int
    tokens_per_second: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MingVisionConfig:
        s = "vision_config"
        model_type = d.get("model_type", "qwen2_5_vit")
        if model_type != "qwen2_5_vit":
            raise ValueError(
                f"config.json field '{s}.model_type' must be 'qwen2_5_vit' (Ming Preview), got {model_type!r}"
            )
        full = d.get("fullatt_block_indexes", [])
        if not isinstance(full, list | tuple) or not all(isinstance(i, int) for i in full):
            raise ValueError(
                f"config.json field '{s}.fullatt_block_indexes' must be a list of ints, got {full!r}"
            )
        cfg = cls(
            depth=_field(d, s, "depth", int),
            hidden_size=_field(d, s, "hidden_size", int),
            num_heads=_field(d, s, "num_heads", int),
            intermediate_size=_field(d, s, "intermediate_size", int),
            hidden_act=_field(d, s, "hidden_act", str, "silu"),
            in_channels=_field(d, s, "in_channels", int, 3),
            patch_size=_field(d, s, "patch_size", int, 14),
            temporal_patch_size=_field(d, s, "temporal_patch_size", int, 2),
            spatial_merge_size=_field(d, s, "spatial_merge_size", int, 2),
            window_size=_field(d, s, "window_size", int, 112),
            fullatt_block_indexes=tuple(full),
            out_hidden_size=_field(d, s, "out_hidden_size", int, PREVIEW_IMAGE_EMB_DIM),
            tokens_per_second=_field(d, s, "tokens_per_second", int, 2),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        s = "vision_config"
        _positive(
            s, {k: getattr(self, k) for k in ("depth", "hidden_size", "num_heads", "intermediate_size")}
        )
        _positive(
            s, {k: getattr(self, k) for k in ("patch_size", "temporal_patch_size", "spatial_merge_size")}
        )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"config.json field '{s}.hidden_size' ({self.hidden_size}) is not divisible by num_heads"
            )
        if self.out_hidden_size != PREVIEW_IMAGE_EMB_DIM:
            raise ValueError(
                f"config.json field '{s}.out_hidden_size' must be {PREVIEW_IMAGE_EMB_DIM} "
                f"(the Preview's hard-coded image_emb_dim), got {self.out_hidden_size}"
            )
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(
                f"config.json field '{s}.fullatt_block_indexes' has indexes outside the depth: {bad}"
            )


@dataclass(frozen=True)
class MingVision3Config:
    """`vision_config` of Ming 2.0 (Qwen3-VL-MoE-style ViT, model_type `qwen3_moe_vit`). Absent fields
    take the upstream class's defaults (`Qwen3VLMoeVisionConfig` in qwen3_moe_vit.py); its merged
    output width `out_hidden_size` is `image_emb_dim`, the input of `linear_proj`."""

    depth: int = 27
    hidden_size: int = 1152
    num_heads: int = 16
    intermediate_size: int = 4304
    hidden_act: str = "gelu_pytorch_tanh"
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    num_position_embeddings: int = 2304
    out_hidden_size: int = 3584
    deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MingVision3Config:
        s = "vision_config"
        deepstack = d.get("deepstack_visual_indexes", list(cls.deepstack_visual_indexes))
        if not isinstance(deepstack, list | tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in deepstack
        ):
            raise ValueError(
                f"config.json field '{s}.deepstack_visual_indexes' must be a list of ints, got {deepstack!r}"
            )
        upstream = cls()  # the defaults, unvalidated
        values = {
            f.name: _field(d, s, f.name, type(getattr(upstream, f.name)), getattr(upstream, f.name))
            for f in fields(cls)
            if f.name != "deepstack_visual_indexes"
        }
        cfg = cls(**values, deepstack_visual_indexes=tuple(deepstack))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        s = "vision_config"
        sizes = ("depth", "hidden_size", "num_heads", "intermediate_size", "in_channels", "out_hidden_size")
        _positive(s, {k: getattr(self, k) for k in sizes})
        geometry = ("patch_size", "temporal_patch_size", "spatial_merge_size", "num_position_embeddings")
        _positive(s, {k: getattr(self, k) for k in geometry})
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError(
                f"config.json field '{s}.hidden_size' ({self.hidden_size}) must split into num_heads "
                f"({self.num_heads}) heads of a multiple of 4 (2-D rotary over h and w)"
            )
        side = math.isqrt(self.num_position_embeddings)
        if side * side != self.num_position_embeddings:
            raise ValueError(
                f"config.json field '{s}.num_position_embeddings' must be a square (a side x side "
                f"table), got {self.num_position_embeddings}"
            )
        indexes = self.deepstack_visual_indexes
        if len(set(indexes)) != len(indexes) or not all(0 <= i < self.depth for i in indexes):
            raise ValueError(
                f"config.json field '{s}.deepstack_visual_indexes' must be distinct blocks of the depth "
                f"{self.depth}, got {list(indexes)}"
            )


@dataclass(frozen=True)
class MingAudioConfig:
    """`audio_config`: the Whisper encoder (`whisper_encoder_config`) and its down-sampling projector."""

    n_mels: int
    n_ctx: int
    n_state: int
    n_head: int
    n_layer: int
    ds_kernel_size: int
    ds_stride: int
    norm_query_embeds: bool

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MingAudioConfig:
        s = "audio_config"
        w = d.get("whisper_encoder_config")
        if not isinstance(w, dict):
            raise ValueError(f"config.json field '{s}.whisper_encoder_config' must be an object, got {w!r}")
        ws = f"{s}.whisper_encoder_config"
        cfg = cls(
            n_mels=_field(w, ws, "n_mels", int),
            n_ctx=_field(w, ws, "n_ctx", int),
            n_state=_field(w, ws, "n_state", int),
            n_head=_field(w, ws, "n_head", int),
            n_layer=_field(w, ws, "n_layer", int),
            ds_kernel_size=_field(d, s, "ds_kernel_size", int, 3),
            ds_stride=_field(d, s, "ds_stride", int, 2),
            norm_query_embeds=_field(d, s, "norm_query_embeds", bool, False),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        ws = "audio_config.whisper_encoder_config"
        _positive(ws, {k: getattr(self, k) for k in ("n_mels", "n_ctx", "n_state", "n_head", "n_layer")})
        _positive("audio_config", {"ds_kernel_size": self.ds_kernel_size, "ds_stride": self.ds_stride})
        if self.n_state % self.n_head:
            raise ValueError(f"config.json field '{ws}.n_state' ({self.n_state}) is not divisible by n_head")


@dataclass(frozen=True)
class MingConfig:
    """The whole `BailingMM2Config`: projector depth, the three sub-configs, the vision-block ids."""

    mlp_depth: int
    llm: BailingMoeV2Config
    vision: MingVisionConfig | MingVision3Config
    audio: MingAudioConfig
    tokens: VisionTokens

    @property
    def version(self) -> str:
        """PREVIEW or MING_2_0 (which vision transformer `vision_config` describes)."""
        return MING_2_0 if isinstance(self.vision, MingVision3Config) else PREVIEW

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MingConfig:
        for key in ("llm_config", "vision_config", "audio_config"):
            if not isinstance(d.get(key), dict):
                raise ValueError(f"config.json field '{key}' must be an object, got {d.get(key)!r}")
        mlp_depth = _field(d, "config", "mlp_depth", int, 2)
        if mlp_depth != 2:
            raise ValueError(
                f"config.json field 'mlp_depth' must be 2 (Linear, GELU, Linear), got {mlp_depth}"
            )
        llm, interleaved = d["llm_config"], False
        if ming_version(d["vision_config"]) == MING_2_0:
            vision: MingVisionConfig | MingVision3Config = MingVision3Config.from_dict(d["vision_config"])
            # 2.0's BailingMoeV2Config defaults the flag to true; the Preview's code has no such flag.
            key = "use_interleaved_frame_timestamp"
            interleaved = _field(llm, "llm_config", key, bool, True)
        else:
            vision = MingVisionConfig.from_dict(d["vision_config"])
        return cls(
            mlp_depth=mlp_depth,
            llm=ming_llm_config(llm),
            vision=vision,
            audio=MingAudioConfig.from_dict(d["audio_config"]),
            tokens=vision_tokens(llm, vision.spatial_merge_size, interleaved),
        )
