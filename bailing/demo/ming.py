"""Write a random-weight Ming-flash-omni Preview thinker (`BailingMM2NativeForConditionalGeneration`)
checkpoint in the upstream layout (specs/ming_layout.md): a tiny ViT, Whisper encoder and Ling LLM.

Flow: `MingDemoSpec` -> demo tokenizer + Ming's media tokens (ids) -> config.json (`llm_config` =
the Ling config dict rewritten to Ming's fields and token ids, `vision_config`, `audio_config`) ->
tokenizer files (Ming chat template), preprocessor_config.json (small image bounds),
generation_config.json -> seeded random weights (`random_ming_state_dict`) -> sharded safetensors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer

from bailing.demo.ling_config import (
    DEMO_MIN_NEW_TOKENS,
    REMOVE,
    LingDemoSpec,
    apply_config_overrides,
    ling_config_dict,
    padded_vocab_size,
)
from bailing.demo.ming_generation import GenerationDemoSpec, write_generation_heads
from bailing.demo.ming_weights import PREVIEW_IMAGE_EMB_DIM, random_ming_state_dict
from bailing.demo.safetensors_writer import write_safetensors_checkpoint
from bailing.demo.tokenizer import (
    BOS_TOKEN,
    CHAT_EOS_TOKEN,
    PAD_TOKEN,
    demo_tokenizer,
    read_package_text,
    special_token_id,
    write_json,
    write_tokenizer_files,
)

# Ming's tokens beyond Ling's (`<role>`, `</role>`, `<|role_end|>` are Ling's), in upstream id order
# (the unnamed ids between them are skipped). The processor needs the image / video / audio markup.
MING_SPECIAL_TOKENS: tuple[str, ...] = (
    "<imagePatch>",
    "<image>",
    "</image>",
    "<video>",
    "</video>",
    "<gen_imagePatch>",
    "<gen_image>",
    "</gen_image>",
    "<imageHere>",
    "<end_of_audio>",
    "<audioPatch>",
    "<audio>",
    "</audio>",
    "<audioHere>",
    "<framePatch>",
    "<text>",
    "<asr>",
    "<tts>",
)
# llm_config's vision-block ids. The Preview ships `video_start_token` = the id of `</image>`, which
# never precedes `<framePatch>`, so its videos get 1-D positions; the demo keeps that quirk.
_VISION_TOKEN_FIELDS = {
    "image_patch_token": "<imagePatch>",
    "image_start_token": "<image>",
    "video_start_token": "</image>",
    "video_patch_token": "<framePatch>",
}
MING_TRANSFORMERS_VERSION = "4.53.0"  # what the Preview's config.json was saved with
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_ROPE_DIM = 64  # upstream hard-codes mrope_section [8, 12, 12]: 32 frequencies
# The demo LLM: Ling's demo sizes with head_dim 128 (x partial rotary 0.5 = VideoRoPE's 64) and the
# Preview's context length.
MING_DEMO_LLM = LingDemoSpec(head_dim=128, max_position_embeddings=32768)

# Ling's config dict -> Ming's `llm_config` (model_type bailing_moe_v2; router and rope fields of the
# Preview; no MTP, bos or dtype fields; expert bias is `use_expert_bias` there).
_LLM_CONFIG_CHANGES: dict[str, Any] = {
    "model_type": "bailing_moe_v2",
    "auto_map": REMOVE,
    "bos_token_id": REMOVE,
    "moe_router_enable_expert_bias": REMOVE,
    "moe_shared_expert_intermediate_size": REMOVE,
    "mtp_loss_scaling_factor": REMOVE,
    "num_nextn_predict_layers": REMOVE,
    "router_dtype": REMOVE,
    "score_function": REMOVE,
    "torch_dtype": REMOVE,
    "transformers_version": REMOVE,
    "use_rmsnorm": REMOVE,
    "norm_head": False,
    "norm_softmax": False,
    "rope_scaling": {"factor": None, "type": "video_rope"},
    "router_type": "MultiRouter",
    "sliding_window": 4096,
    "use_expert_bias": True,
    "use_sliding_window": False,
}


@dataclasses.dataclass(frozen=True)
class MingDemoSpec:
    """Sizes of the tiny Ming thinker; defaults are the shipped demo model.

    `llm` is the language model (head_dim 128 at partial rotary 0.5: VideoRoPE needs a rotary dim of
    64). The ViT runs full attention in every `vision_full_attention_every`-th block (upstream: the
    8th of 32), windows elsewhere. `min_pixels` / `max_pixels` bound each image (preprocessor config).
    """

    llm: LingDemoSpec = MING_DEMO_LLM
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_num_heads: int = 2
    vision_intermediate_size: int = 48
    vision_window_size: int = 112
    vision_full_attention_every: int = 2
    audio_n_state: int = 32
    audio_n_head: int = 2
    audio_n_layer: int = 2
    audio_n_ctx: int = 15000  # encoder positions: 2·n_ctx mel frames = 300 s, the processor's limit
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 224 * 224
    # Image-generation heads (mlp/, connector/, transformer/, vae/, scheduler/); None: understanding only
    image_generation: GenerationDemoSpec | None = dataclasses.field(default_factory=GenerationDemoSpec)

    def __post_init__(self) -> None:
        if not isinstance(self.llm, LingDemoSpec):
            raise ValueError(f"MingDemoSpec.llm must be a LingDemoSpec, got {type(self.llm).__name__}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or value < 1):
                raise ValueError(f"MingDemoSpec.{field.name} must be an int >= 1, got {value!r}")
        rotary = int(self.llm.head_dim * self.llm.partial_rotary_factor)
        if rotary != VIDEO_ROPE_DIM:
            raise ValueError(
                f"MingDemoSpec.llm head_dim x partial_rotary_factor must be {VIDEO_ROPE_DIM} "
                f"(VideoRoPE sections [8, 12, 12]), got {rotary}"
            )
        if self.llm.num_nextn_predict_layers:
            raise ValueError("MingDemoSpec.llm.num_nextn_predict_layers must be 0 (Ming has no MTP)")
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError("MingDemoSpec.vision_num_heads must divide vision_hidden_size")
        if self.audio_n_state % self.audio_n_head or self.audio_n_state % 2:
            raise ValueError("MingDemoSpec.audio_n_state must be even and divisible by audio_n_head")
        if self.max_pixels < self.min_pixels:
            raise ValueError("MingDemoSpec.max_pixels must be >= min_pixels")


def ming_demo_tokenizer(vocab_size: int = 2048) -> Tokenizer:
    """The Ling demo tokenizer plus `MING_SPECIAL_TOKENS` as special tokens (the next free ids)."""
    tokenizer = demo_tokenizer(vocab_size)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MING_SPECIAL_TOKENS])
    return tokenizer


def ming_chat_template() -> str:
    """Ming's chat format as a Jinja template (what `render_chat` writes; media parts -> placeholders)."""
    return read_package_text("ming_chat_template.jinja")


def ming_llm_config(spec: MingDemoSpec, tokenizer: Tokenizer) -> dict[str, Any]:
    """`llm_config`: the Ling config of `spec.llm` in Ming's form; eos, pad, vision ids: `tokenizer`'s."""
    llm = ling_config_dict(
        spec.llm,
        vocab_size=padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True)),
        bos_id=special_token_id(tokenizer, BOS_TOKEN),
        eos_id=special_token_id(tokenizer, CHAT_EOS_TOKEN),
        pad_id=special_token_id(tokenizer, PAD_TOKEN),
    )
    ids = {field: special_token_id(tokenizer, token) for field, token in _VISION_TOKEN_FIELDS.items()}
    changes = {
        **_LLM_CONFIG_CHANGES,
        **ids,
        "moe_router_topk_scaling_factor": spec.llm.routed_scaling_factor,  # upstream never reads it
        "spatial_merge_size": 2,
        "tokens_per_second": 2,
    }
    return apply_config_overrides(llm, changes)


def ming_vision_config(spec: MingDemoSpec) -> dict[str, Any]:
    """`vision_config`: the Preview's Qwen2.5-VL ViT at demo sizes (output width fixed at 8192)."""
    every = spec.vision_full_attention_every
    return {
        "architectures": ["Qwen2_5_VisionTransformer"],
        "depth": spec.vision_depth,
        "fullatt_block_indexes": [i for i in range(spec.vision_depth) if (i + 1) % every == 0],
        "hidden_act": "silu",
        "hidden_size": spec.vision_hidden_size,
        "in_channels": 3,
        "in_chans": 3,
        "intermediate_size": spec.vision_intermediate_size,
        "model_type": "qwen2_5_vit",
        "num_heads": spec.vision_num_heads,
        "out_hidden_size": PREVIEW_IMAGE_EMB_DIM,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": spec.vision_window_size,
    }


def ming_audio_config(spec: MingDemoSpec) -> dict[str, Any]:
    """`audio_config`: the Whisper encoder (128 mels) and its k3 s2 projector, queries L2-normalised."""
    whisper = {
        "n_ctx": spec.audio_n_ctx,
        "n_head": spec.audio_n_head,
        "n_layer": spec.audio_n_layer,
        "n_mels": 128,
        "n_state": spec.audio_n_state,
    }
    return {"ds_kernel_size": 3, "ds_stride": 2, "norm_query_embeds": True, "whisper_encoder_config": whisper}


def ming_config_dict(spec: MingDemoSpec, tokenizer: Tokenizer, torch_dtype: str) -> dict[str, Any]:
    """config.json of `spec`: BailingMM2Config's fields (sorted keys, as Hugging Face saves them)."""
    return {
        "architectures": ["BailingMM2NativeForConditionalGeneration"],
        "audio_config": ming_audio_config(spec),
        "llm_config": ming_llm_config(spec, tokenizer),
        "mlp_depth": 2,
        "model_type": "bailingmm_moe_v2_lite",
        "torch_dtype": torch_dtype,
        "transformers_version": MING_TRANSFORMERS_VERSION,
        "vision_config": ming_vision_config(spec),
    }


def ming_preprocessor_config(spec: MingDemoSpec) -> dict[str, Any]:
    """preprocessor_config.json: Qwen2-VL image processing (bicubic, CLIP mean/std) within the demo's
    pixel bounds, and the Whisper front end's mel count."""
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "max_pixels": spec.max_pixels,
        "merge_size": 2,
        "min_pixels": spec.min_pixels,
        "patch_size": 14,
        "resample": 3,  # PIL bicubic
        "rescale_factor": 1 / 255,
        "temporal_patch_size": 2,
        "whisper_frontend_args": {"n_mels": 128},
    }


def ming_generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """Stop on the end of the assistant's turn (`<|role_end|>`, the processor's gen_terminator)."""
    return {
        "_from_model_config": False,
        "bos_token_id": special_token_id(tokenizer, BOS_TOKEN),
        "eos_token_id": special_token_id(tokenizer, CHAT_EOS_TOKEN),
        "pad_token_id": special_token_id(tokenizer, PAD_TOKEN),
        "min_new_tokens": DEMO_MIN_NEW_TOKENS,  # random weights: no end of turn as the first token
        "transformers_version": MING_TRANSFORMERS_VERSION,
    }


def write_ming_checkpoint(
    out_dir: str | Path,
    spec: MingDemoSpec = MingDemoSpec(),
    *,
    seed: int = 3,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int | None = 2_000_000,
) -> Path:
    """Write a random-weight Ming Preview thinker folder to `out_dir` and return its path.

    Files: config.json, generation_config.json, preprocessor_config.json, tokenizer.json,
    tokenizer_config.json (eos `<|role_end|>`, Ming chat template), special_tokens_map.json and the
    weights (sharded past `max_shard_bytes`). Every token id in the configs is the tokenizer's.
    With `spec.image_generation` the image-generation heads are written beside it (2.0 layout).
    """
    if not isinstance(spec, MingDemoSpec):
        raise ValueError(f"spec must be a MingDemoSpec, got {type(spec).__name__}")
    tokenizer = ming_demo_tokenizer(spec.llm.tokenizer_vocab_size)
    config = ming_config_dict(spec, tokenizer, str(dtype).removeprefix("torch."))
    files = ThinkerFiles(tokenizer, config, ming_preprocessor_config(spec), spec.llm)
    return write_thinker(out_dir, files, spec.image_generation, seed, dtype, max_shard_bytes)


@dataclasses.dataclass(frozen=True)
class ThinkerFiles:
    """What a Ming thinker folder is written from (Preview or 2.0)."""

    tokenizer: Any
    config: dict[str, Any]
    preprocessor: dict[str, Any]
    llm: Any  # the LLM's demo spec: max_position_embeddings, hidden_size


def write_thinker(
    out_dir: str | Path,
    files: ThinkerFiles,
    image_generation: GenerationDemoSpec | None,
    seed: int,
    dtype: torch.dtype,
    max_shard_bytes: int | None,
) -> Path:
    """The thinker's files and random weights (seed), then the image-generation heads (seed + 1)."""
    state_dict = random_ming_state_dict(files.config, seed)  # checks the config before any file is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(
        out, files.tokenizer, ming_chat_template(), eos_token=CHAT_EOS_TOKEN,
        model_max_length=files.llm.max_position_embeddings, extra_special_tokens=MING_SPECIAL_TOKENS,
    )  # fmt: skip
    write_json(out / "config.json", files.config)
    write_json(out / "generation_config.json", ming_generation_config(files.tokenizer))
    write_json(out / "preprocessor_config.json", files.preprocessor)
    write_safetensors_checkpoint(out, state_dict, dtype=dtype, max_shard_bytes=max_shard_bytes)
    if image_generation is not None:
        write_generation_heads(out, files.llm.hidden_size, image_generation, seed=seed + 1, dtype=dtype)
    return out
