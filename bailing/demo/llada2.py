"""Write a random-weight LLaDA2 (`llada2_moe`) checkpoint: the Ling demo model run as a diffusion LM.

Flow: `LingDemoSpec` -> demo tokenizer + `<|mask|>` -> Ling config.json rewritten to LLaDA2's fields
-> tokenizer files (Ling chat template) -> seeded random weights in the upstream key layout with a
scaled lm_head -> sharded safetensors. The mask id lives in the tokenizer only (LLaDA2 configs have
no mask field), so readers must resolve `<|mask|>` from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer

from bailing.demo.ling_config import (
    REMOVE,
    UPSTREAM_TRANSFORMERS_VERSION,
    LingDemoSpec,
    apply_config_overrides,
    ling_config_dict,
    padded_vocab_size,
)
from bailing.demo.ling_weights import random_ling_state_dict
from bailing.demo.safetensors_writer import write_safetensors_checkpoint
from bailing.demo.tokenizer import (
    BASE_EOS_TOKEN,
    BOS_TOKEN,
    CHAT_EOS_TOKEN,
    PAD_TOKEN,
    demo_tokenizer,
    ling_chat_template,
    special_token_id,
    write_json,
    write_tokenizer_files,
)

MASK_TOKEN = "<|mask|>"
LLADA2_EOS_TOKEN = "<|endoftext|>"  # what LLaDA2's generate() stops on
# Random weights give near-uniform predictions (nothing passes a 0.9 threshold, one token per step);
# scaling lm_head makes the demo confident, so diffusion commits several tokens per step.
DEMO_LM_HEAD_SCALE = 20.0

# LLaDA2's config has no such fields (QK-norm always on, no MTP); its checkpoints are not KV-cached.
_LLADA2_CONFIG_CHANGES: dict[str, Any] = {
    "architectures": ["LLaDA2MoeModelLM"],
    "model_type": "llada2_moe",
    "auto_map": REMOVE,
    "use_qk_norm": REMOVE,
    "num_nextn_predict_layers": REMOVE,
    "mtp_loss_scaling_factor": REMOVE,
    "use_cache": False,
}


def llada2_demo_tokenizer(vocab_size: int = 2048) -> Tokenizer:
    """The Ling demo tokenizer plus `<|mask|>` as one more special token (the next free id)."""
    tokenizer = demo_tokenizer(vocab_size)
    tokenizer.add_special_tokens([AddedToken(MASK_TOKEN, special=True, normalized=False)])
    return tokenizer


def llada2_config_dict(spec: LingDemoSpec, tokenizer: Tokenizer, torch_dtype: str) -> dict[str, Any]:
    """config.json of `spec` in LLaDA2's form; token ids come from `tokenizer`."""
    eos = special_token_id(tokenizer, LLADA2_EOS_TOKEN)
    config = ling_config_dict(
        spec,
        vocab_size=padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True)),
        bos_id=special_token_id(tokenizer, BOS_TOKEN),
        eos_id=eos,
        pad_id=special_token_id(tokenizer, PAD_TOKEN),
        torch_dtype=torch_dtype,
    )
    return apply_config_overrides(config, _LLADA2_CONFIG_CHANGES)


def write_llada2_checkpoint(
    out_dir: str | Path,
    spec: LingDemoSpec = LingDemoSpec(),  # noqa: B008 (frozen dataclass: safe default)
    *,
    seed: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int | None = 2_000_000,
    with_tokenizer: bool = True,
    lm_head_scale: float = DEMO_LM_HEAD_SCALE,
    config_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a random-weight LLaDA2 checkpoint folder to `out_dir` and return its path.

    `spec.num_nextn_predict_layers` must be 0 (LLaDA2 has no MTP). `config_overrides` are applied
    to config.json before the weights are laid out, so the weights always match the written config.
    """
    if not isinstance(spec, LingDemoSpec):
        raise ValueError(f"spec must be a LingDemoSpec, got {type(spec).__name__}")
    if spec.num_nextn_predict_layers:
        raise ValueError("LingDemoSpec.num_nextn_predict_layers must be 0 for LLaDA2 (it has no MTP)")
    tokenizer = llada2_demo_tokenizer(spec.tokenizer_vocab_size)
    config = llada2_config_dict(spec, tokenizer, str(dtype).removeprefix("torch."))
    config = apply_config_overrides(config, config_overrides)
    state_dict = random_ling_state_dict(config, seed)  # validates the config before any file is written
    if "lm_head.weight" in state_dict:
        state_dict["lm_head.weight"] *= lm_head_scale
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if with_tokenizer:
        max_len = config.get("max_position_embeddings") or spec.max_position_embeddings
        write_tokenizer_files(
            out, tokenizer, ling_chat_template(), eos_token=LLADA2_EOS_TOKEN,
            model_max_length=max_len, extra_special_tokens=(MASK_TOKEN,),
        )  # fmt: skip
    write_json(out / "config.json", config)
    write_json(out / "generation_config.json", _generation_config(tokenizer))
    write_safetensors_checkpoint(out, state_dict, dtype=dtype, max_shard_bytes=max_shard_bytes)
    return out


def _generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """Stop on end-of-text or end-of-turn (the Ling chat template closes turns with `<|role_end|>`)."""
    return {
        "_from_model_config": False,
        "bos_token_id": special_token_id(tokenizer, BOS_TOKEN),
        "eos_token_id": [special_token_id(tokenizer, t) for t in (BASE_EOS_TOKEN, CHAT_EOS_TOKEN)],
        "pad_token_id": special_token_id(tokenizer, PAD_TOKEN),
        "transformers_version": UPSTREAM_TRANSFORMERS_VERSION,
    }
