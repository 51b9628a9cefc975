"""Write a random-weight Ming 2.0 speech stage: the `talker/` folder beside a demo thinker, in the
upstream layout (specs/ming_generation.md 2.1, golden/ming-tts-tiny).

Files under `talker/`: config.json (`BailingTalkerConfig`: flowmodel, aggregator, steps, patch sizes)
+ model.safetensors (`BailingTalker2`: `model.*` Qwen2 backbone, `cfm.model.*`, `aggregator.*`,
`stop_head.*`, `spk_head.*`); llm/ (the backbone's Qwen2 config.json and a byte-level BPE tokenizer
with Qwen's chat tokens and `<audio>` / `<audioPatch>` as single tokens); vae/ (`AudioVAE` config.json
+ model.safetensors); campplus.onnx and data/ (voices: bailing/demo/ming2_voices.py).
Flow: `SpeechDemoSpec` -> config dicts (checked by the models' own config parsers) -> modules built
with a seeded init -> all-ones / all-zeros parameters re-drawn (as the golden generator does) -> two
demo adjustments (below) -> safetensors in `dtype`.
Demo adjustments: the stop head is biased towards "stop" (p ~ 0.9), so every utterance ends at the
first step the talker may stop at (after 10 patches: 11 x patch_size latent frames); the VAE head's
log-magnitude bias sets a moderate loudness. The weights are random: speech comes out as noise.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer
from torch import nn

from bailing.demo.ling_config import padded_vocab_size
from bailing.demo.ming2_voices import write_campplus, write_voices
from bailing.demo.safetensors_writer import write_safetensors_checkpoint
from bailing.demo.tokenizer import demo_tokenizer, special_token_id, write_json
from models.ming.speech.talker import BailingTalker2
from models.ming.speech.talker_config import LATENT_DIM, TalkerConfig, backbone_config
from models.ming.speech.vae import AudioVAE
from models.ming.speech.vae_config import ENCODER_AGGREGATOR_LAYERS, AudioVAEConfig

TRANSFORMERS_VERSION = "4.57.1"  # what upstream 2.0 saves its configs with
# Qwen2.5's chat and vision tokens in upstream id order, then Ming's audio tokens.
TALKER_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<audio>",
    "<audioPatch>",
)
TALKER_EOS_TOKEN = "<|endoftext|>"
STOP_BIAS = 1.2  # stop_head bias: [-b, +b] -> p(stop) ~ sigmoid(2b) ~ 0.92
STOP_WEIGHT_SCALE = 0.05  # keeps the hidden state's share of the stop logit small
VAE_LOG_MAGNITUDE_BIAS = 1.0  # ISTFT head: log-magnitude offset (waveform RMS ~0.1)


@dataclasses.dataclass(frozen=True)
class SpeechDemoSpec:
    """Sizes of the tiny talker and AudioVAE; defaults are the demo model's.

    The DiT, aggregator and backbone widths differ on purpose (a swapped shape cannot load). The VAE
    runs at `sample_rate` with `vae_hop` samples per decoder frame and `vae_patch_size` frames per
    latent; its encoder backbone needs >= 4 layers (upstream builds its patch aggregator from it).
    """

    backbone_hidden: int = 64
    backbone_layers: int = 2
    backbone_heads: int = 4
    backbone_kv_heads: int = 2
    backbone_intermediate: int = 128
    flow_hidden: int = 96
    flow_depth: int = 2
    flow_heads: int = 4
    aggregator_hidden: int = 80
    aggregator_depth: int = 2
    aggregator_heads: int = 4
    steps: int = 10
    patch_size: int = 4
    history_patch_size: int = 32
    vae_hidden: int = 64
    vae_heads: int = 4
    vae_kv_heads: int = 2
    vae_intermediate: int = 128
    vae_decoder_layers: int = 2
    vae_encoder_layers: int = ENCODER_AGGREGATOR_LAYERS
    vae_hop: int = 320  # 50 decoder frames per second at 16 kHz (upstream's default hop)
    vae_patch_size: int = 4
    sample_rate: int = 16000
    tokenizer_vocab_size: int = 2048

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SpeechDemoSpec.{field.name} must be an int >= 1, got {value!r}")
        for width, heads in (
            ("backbone_hidden", "backbone_heads"), ("flow_hidden", "flow_heads"),
            ("aggregator_hidden", "aggregator_heads"), ("vae_hidden", "vae_heads"),
        ):  # fmt: skip
            if getattr(self, width) % (2 * getattr(self, heads)):
                raise ValueError(f"SpeechDemoSpec.{heads} must split {width} into heads of even width")
        for heads, kv in (("backbone_heads", "backbone_kv_heads"), ("vae_heads", "vae_kv_heads")):
            if getattr(self, heads) % getattr(self, kv):
                raise ValueError(f"SpeechDemoSpec.{kv} must divide {heads}")
        if self.history_patch_size < self.patch_size:
            raise ValueError("SpeechDemoSpec.history_patch_size must be >= patch_size")
        if self.vae_encoder_layers < ENCODER_AGGREGATOR_LAYERS:
            raise ValueError(f"SpeechDemoSpec.vae_encoder_layers must be >= {ENCODER_AGGREGATOR_LAYERS}")


def talker_tokenizer(vocab_size: int = 2048) -> Tokenizer:
    """The demo byte-level BPE without Ling's specials, plus `TALKER_SPECIAL_TOKENS` (the next ids)."""
    data = json.loads(demo_tokenizer(vocab_size).to_str())
    data["added_tokens"] = []
    tokenizer = Tokenizer.from_str(json.dumps(data))
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in TALKER_SPECIAL_TOKENS]
    )
    return tokenizer


def _block_stack(hidden: int, depth: int, heads: int, **extra: Any) -> dict[str, Any]:
    return {
        "attn_backend": "torch", "attn_mask_enabled": False, "depth": depth, "dropout": 0.0,
        "hidden_size": hidden, "in_channels": LATENT_DIM, **extra, "mlp_ratio": 4.0,
        "num_heads": heads, "pe_attn_head": None, "qk_norm": None,
    }  # fmt: skip


def talker_config(spec: SpeechDemoSpec, dtype: str) -> dict[str, Any]:
    """`talker/config.json` (`BailingTalkerConfig`)."""
    return {
        "aggregator": _block_stack(spec.aggregator_hidden, spec.aggregator_depth, spec.aggregator_heads),
        "architectures": ["BailingTalker2"],
        "dtype": dtype,
        "flowmodel": _block_stack(
            spec.flow_hidden, spec.flow_depth, spec.flow_heads, llm_cond_dim=spec.backbone_hidden
        ),
        "history_patch_size": spec.history_patch_size,
        "patch_size": spec.patch_size,
        "steps": spec.steps,
        "transformers_version": TRANSFORMERS_VERSION,
    }


def _qwen2(hidden: int, layers: int, heads: int, kv: int, intermediate: int, **extra: Any) -> dict[str, Any]:
    return {
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": hidden,
        "intermediate_size": intermediate, "max_position_embeddings": 4096, "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_key_value_heads": kv, "rms_norm_eps": 1e-06, **extra,
    }  # fmt: skip


def llm_config(spec: SpeechDemoSpec, tokenizer: Tokenizer, dtype: str) -> dict[str, Any]:
    """`talker/llm/config.json`: the Qwen2 backbone (its embedding rows cover the tokenizer)."""
    eos = special_token_id(tokenizer, TALKER_EOS_TOKEN)
    qwen = _qwen2(
        spec.backbone_hidden, spec.backbone_layers, spec.backbone_heads, spec.backbone_kv_heads,
        spec.backbone_intermediate, bos_token_id=eos, eos_token_id=eos, initializer_range=0.02,
        layer_types=["full_attention"] * spec.backbone_layers, max_window_layers=spec.backbone_layers,
        rope_scaling=None, rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=True,
        use_cache=True, use_sliding_window=False,
        vocab_size=padded_vocab_size(tokenizer.get_vocab_size(with_added_tokens=True)),
    )  # fmt: skip
    return {"architectures": ["Qwen2Model"], "dtype": dtype, "model_type": "qwen2", **qwen}


def vae_config(spec: SpeechDemoSpec, dtype: str) -> dict[str, Any]:
    """`talker/vae/config.json` (`AudioVAEconfig`): one latent = vae_hop x vae_patch_size samples."""

    def backbone(layers: int) -> dict[str, Any]:
        return _qwen2(
            spec.vae_hidden, layers, spec.vae_heads, spec.vae_kv_heads, spec.vae_intermediate,
            attn_implementation=None, rope_theta=10000.0, tie_word_embeddings=False,
            use_sliding_window=False, vocab_size=2,
        )  # fmt: skip

    return {
        "architectures": ["AudioVAE"],
        "dec_kwargs": {
            "backbone": backbone(spec.vae_decoder_layers), "latent_dim": LATENT_DIM,
            "output_dim": spec.vae_hop,
        },
        "dtype": dtype,
        "enc_kwargs": {
            "backbone": backbone(spec.vae_encoder_layers), "hop_size": spec.vae_hop,
            "input_dim": spec.vae_hop, "latent_dim": LATENT_DIM,
        },
        "init_method": "normal",
        "patch_size": spec.vae_patch_size,
        "sample_rate": spec.sample_rate,
        "transformers_version": TRANSFORMERS_VERSION,
    }  # fmt: skip


@torch.no_grad()
def _redraw_constants(module: nn.Module, generator: torch.Generator) -> None:
    """All-ones parameters (norm gains) -> 1 + 0.1 N(0, 1); all-zeros ones (biases, zero-initialised
    final layers, CLS rows) -> 0.1 N(0, 1): every path of the random model carries signal."""
    for p in module.parameters():
        if bool((p == 1).all()):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
        elif not p.any():
            p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def random_talker(talker_cfg: dict, llm_cfg: dict, seed: int) -> BailingTalker2:
    """A seeded `BailingTalker2` of these configs, stop head biased towards "stop"."""
    torch.manual_seed(seed)
    talker = BailingTalker2(TalkerConfig.from_dicts(talker_cfg, llm_cfg), backbone_config(llm_cfg))
    _redraw_constants(talker, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        talker.stop_head.weight.mul_(STOP_WEIGHT_SCALE)
        talker.stop_head.bias.copy_(torch.tensor([-STOP_BIAS, STOP_BIAS]))
    return talker


def random_vae(config: dict, seed: int) -> AudioVAE:
    """A seeded `AudioVAE` of this config, its ISTFT head's log-magnitude offset set."""
    torch.manual_seed(seed)
    vae = AudioVAE(AudioVAEConfig.from_dict(config))
    _redraw_constants(vae, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        bias = vae.decoder.head.out.bias
        bias[: bias.shape[0] // 2] += VAE_LOG_MAGNITUDE_BIAS  # [log-magnitude | phase]
    return vae


def _write_tokenizer(folder: Path, tokenizer: Tokenizer) -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json (Qwen2's fast-tokenizer form)."""
    extra = [t for t in TALKER_SPECIAL_TOKENS if t != TALKER_EOS_TOKEN]
    decoder = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tokenizer.get_added_tokens_decoder().items())
    }  # fmt: skip
    named = {"eos_token": TALKER_EOS_TOKEN, "pad_token": TALKER_EOS_TOKEN}
    (folder / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    write_json(folder / "tokenizer_config.json", {
        "added_tokens_decoder": decoder, "additional_special_tokens": extra, "bos_token": None,
        "clean_up_tokenization_spaces": False, **named, "model_max_length": 32768,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })  # fmt: skip
    write_json(folder / "special_tokens_map.json", {"additional_special_tokens": extra, **named})


def write_speech_parts(
    folder: str | Path, spec: SpeechDemoSpec, *, seed: int, dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Write the `talker/` folder (talker, llm/, vae/, campplus.onnx, data/) and return its path."""
    if not isinstance(spec, SpeechDemoSpec):
        raise ValueError(f"spec must be a SpeechDemoSpec, got {type(spec).__name__}")
    name = str(dtype).removeprefix("torch.")
    tokenizer = talker_tokenizer(spec.tokenizer_vocab_size)
    configs = {
        "": talker_config(spec, name),
        "llm": llm_config(spec, tokenizer, name),
        "vae": vae_config(spec, name),
    }
    talker = random_talker(configs[""], configs["llm"], seed)  # validates the configs before any write
    vae = random_vae(configs["vae"], seed + 1)
    out = Path(folder)
    for sub, config in configs.items():
        (out / sub).mkdir(parents=True, exist_ok=True)
        write_json(out / sub / "config.json", config)
    _write_tokenizer(out / "llm", tokenizer)
    write_safetensors_checkpoint(out, talker.state_dict(), dtype=dtype)
    write_safetensors_checkpoint(out / "vae", vae.state_dict(), dtype=dtype)
    write_campplus(out / "campplus.onnx", seed=seed + 2)
    write_voices(out, spec.sample_rate)
    return out
