"""Write a random-weight Ming-flash-omni 2.0 checkpoint in the upstream 2.0 layout: the thinker
(`BailingMM2NativeForConditionalGeneration`, specs/ming_layout.md: a tiny Qwen3-VL-MoE-style ViT with
its deepstack mergers, the Whisper encoder and the Ling LLM), the Z-Image generation heads and the
speech stage (`talker/`: talker, AudioVAE, CAM++ stand-in, voice presets; specs/ming_generation.md).

Flow: `Ming2DemoSpec` -> the Preview demo's tokenizer, LLM and audio sections (bailing/demo/ming.py)
rewritten to 2.0's fields (rope_theta 2.4e6, `use_interleaved_frame_timestamp`) -> config.json with
2.0's `vision_config` -> tokenizer files, preprocessor_config.json (patch 16, small image bounds,
interleaved frame timestamps), generation_config.json -> seeded random weights -> sharded safetensors
-> mlp/, connector/, transformer/, vae/, scheduler/ (bailing/demo/ming_generation.py) -> talker/
(bailing/demo/ming2_speech.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from bailing.demo.ling_config import REMOVE, LingDemoSpec, apply_config_overrides
from bailing.demo.ming import (
    CLIP_MEAN,
    CLIP_STD,
    MING_DEMO_LLM,
    MingDemoSpec,
    ThinkerFiles,
    ming_audio_config,
    ming_demo_tokenizer,
    ming_llm_config,
    write_thinker,
)
from bailing.demo.ming2_speech import SpeechDemoSpec, write_speech_parts
from bailing.demo.ming_generation import GenerationDemoSpec

MING2_TRANSFORMERS_VERSION = "4.57.1"  # what the 2.0 config.json was saved with
MING2_ROPE_THETA = 2400000.0
# The demo LLM: the Preview demo's, at 2.0's rope base.
MING2_DEMO_LLM = dataclasses.replace(MING_DEMO_LLM, rope_theta=MING2_ROPE_THETA)


@dataclasses.dataclass(frozen=True)
class Ming2DemoSpec:
    """Sizes of the tiny Ming 2.0 thinker; defaults are the demo model.

    The ViT's deepstack mergers sit after blocks `vision_deepstack_indexes` (upstream: 8, 16, 24 of
    27). `vision_out_hidden_size` is `image_emb_dim` (upstream: the LLM width, 4096); the demo keeps it
    different from the LLM width so a swapped projector shape cannot pass. `min_pixels` /
    `max_pixels` bound each image (preprocessor config), in multiples of 32 x 32 pixels.
    """

    llm: LingDemoSpec = MING2_DEMO_LLM
    vision_depth: int = 4
    vision_hidden_size: int = 32
    vision_num_heads: int = 2
    vision_intermediate_size: int = 48
    vision_num_position_embeddings: int = 64  # an 8 x 8 learned table
    vision_out_hidden_size: int = 96
    vision_deepstack_indexes: tuple[int, ...] = (1, 2, 3)
    audio_n_state: int = 32
    audio_n_head: int = 2
    audio_n_layer: int = 2
    audio_n_ctx: int = 15000
    min_pixels: int = 4 * 32 * 32
    max_pixels: int = 224 * 224
    interleaved_frame_timestamp: bool = True
    # Image-generation heads (Z-Image, 2.0's variant) and the speech stage (talker/); None: left out
    image_generation: GenerationDemoSpec | None = dataclasses.field(default_factory=GenerationDemoSpec)
    speech: SpeechDemoSpec | None = dataclasses.field(default_factory=SpeechDemoSpec)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Ming2DemoSpec.{field.name} must be an int >= 1, got {value!r}")
        if self.vision_hidden_size % (4 * self.vision_num_heads):
            raise ValueError("Ming2DemoSpec.vision_num_heads must give heads of a multiple of 4 channels")
        side = int(self.vision_num_position_embeddings**0.5)
        if side * side != self.vision_num_position_embeddings:
            raise ValueError("Ming2DemoSpec.vision_num_position_embeddings must be a square")
        if not all(0 <= i < self.vision_depth for i in self.vision_deepstack_indexes):
            raise ValueError("Ming2DemoSpec.vision_deepstack_indexes must be blocks of vision_depth")
        if self.max_pixels < self.min_pixels:
            raise ValueError("Ming2DemoSpec.max_pixels must be >= min_pixels")
        self.preview_parts()  # the LLM / audio sizes are checked as the Preview demo's

    def preview_parts(self) -> MingDemoSpec:
        """The Preview demo spec whose LLM and audio sections 2.0 shares (its vision is unused)."""
        return MingDemoSpec(
            llm=self.llm,
            audio_n_state=self.audio_n_state,
            audio_n_head=self.audio_n_head,
            audio_n_layer=self.audio_n_layer,
            audio_n_ctx=self.audio_n_ctx,
            image_generation=None,
        )


def ming2_vision_config(spec: Ming2DemoSpec) -> dict[str, Any]:
    """`vision_config`: 2.0's Qwen3-VL-MoE-style ViT (`Qwen3MoeVisionTransformer`) at demo sizes."""
    return {
        "architectures": ["Qwen3MoeVisionTransformer"],
        "deepstack_visual_indexes": list(spec.vision_deepstack_indexes),
        "depth": spec.vision_depth,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": spec.vision_hidden_size,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": spec.vision_intermediate_size,
        "model_type": "qwen3_moe_vit",
        "num_heads": spec.vision_num_heads,
        "num_position_embeddings": spec.vision_num_position_embeddings,
        "out_hidden_size": spec.vision_out_hidden_size,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }


def ming2_config_dict(spec: Ming2DemoSpec, tokenizer: Tokenizer, torch_dtype: str) -> dict[str, Any]:
    """config.json of `spec`: the Preview demo's sections with 2.0's LLM fields and vision_config.
    2.0's llm_config has no `spatial_merge_size` / `tokens_per_second` (its code hard-codes them)."""
    parts = spec.preview_parts()
    llm = apply_config_overrides(
        ming_llm_config(parts, tokenizer),
        {
            "spatial_merge_size": REMOVE,
            "tokens_per_second": REMOVE,
            "use_interleaved_frame_timestamp": spec.interleaved_frame_timestamp,
        },
    )
    return {
        "architectures": ["BailingMM2NativeForConditionalGeneration"],
        "audio_config": ming_audio_config(parts),
        "llm_config": llm,
        "mlp_depth": 2,
        "model_type": "bailingmm_moe_v2_lite",
        "torch_dtype": torch_dtype,
        "transformers_version": MING2_TRANSFORMERS_VERSION,
        "vision_config": ming2_vision_config(spec),
    }


def ming2_preprocessor_config(spec: Ming2DemoSpec) -> dict[str, Any]:
    """preprocessor_config.json: 2.0's image processing (patch 16, merge 2: sides in multiples of 32)
    within the demo's pixel bounds, interleaved frame timestamps, the Whisper front end's mel count."""
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
        "patch_size": 16,
        "resample": 3,  # PIL bicubic
        "rescale_factor": 1 / 255,
        "temporal_patch_size": 2,
        "use_interleaved_frame_timestamp": spec.interleaved_frame_timestamp,
        "whisper_frontend_args": {"n_mels": 128},
    }


def write_ming2_checkpoint(
    out_dir: str | Path,
    spec: Ming2DemoSpec = Ming2DemoSpec(),
    *,
    seed: int = 3,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int | None = 2_000_000,
) -> Path:
    """Write a random-weight Ming 2.0 folder to `out_dir` and return its path.

    Thinker files: config.json, generation_config.json, preprocessor_config.json, tokenizer.json,
    tokenizer_config.json (eos `<|role_end|>`, Ming chat template), special_tokens_map.json and the
    weights (every 2.0 key, deepstack mergers included; sharded past `max_shard_bytes`). With
    `spec.image_generation`: the generation heads' folders (seed + 1); with `spec.speech`: `talker/`
    (seeds from seed + 2).
    """
    if not isinstance(spec, Ming2DemoSpec):
        raise ValueError(f"spec must be a Ming2DemoSpec, got {type(spec).__name__}")
    tokenizer = ming_demo_tokenizer(spec.llm.tokenizer_vocab_size)
    config = ming2_config_dict(spec, tokenizer, str(dtype).removeprefix("torch."))
    files = ThinkerFiles(tokenizer, config, ming2_preprocessor_config(spec), spec.llm)
    out = write_thinker(out_dir, files, spec.image_generation, seed, dtype, max_shard_bytes)
    if spec.speech is not None:
        write_speech_parts(out / "talker", spec.speech, seed=seed + 2, dtype=dtype)
    return out
