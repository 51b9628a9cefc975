"""Settings of Ming's AudioVAE (upstream `AudioVAE/configuration_audio_vae.py`), read from
`talker/vae/config.json`: the sample rate, the latent patch size, and the encoder / decoder kwargs
with their Qwen2 backbones, which become transformers `Qwen2Config`s (SDPA attention).

Geometry: one decoder frame is `hop = dec_kwargs.output_dim` samples; with `patch_size = P != -1`
one latent frame is P decoder frames, so a latent covers `hop * P` samples. The ISTFT uses
n_fft = win = 4 * hop (upstream hard-codes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import Qwen2Config

ENCODER_AGGREGATOR_LAYERS = 4  # upstream Encoder hard-codes `config.num_hidden_layers = 4`
_DEFAULT_SAMPLE_RATE = 16000  # upstream AudioVAEconfig defaults
_DEFAULT_PATCH_SIZE = -1
_DEFAULT_HOP_SIZE = 320  # upstream Encoder's `hop_size` default


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where} must be a positive integer, got {value!r}")
    return value


def _section(data: dict[str, Any], name: str, required: tuple[str, ...]) -> dict[str, Any]:
    section = data.get(name)
    if not isinstance(section, dict):
        raise ValueError(f"{name} must be an object, got {type(section).__name__}")
    for key in required:
        if key not in section:
            raise ValueError(f"{name} lacks {key!r}")
    if not isinstance(section["backbone"], dict):
        raise ValueError(f"{name}.backbone must be an object, got {type(section['backbone']).__name__}")
    return section


def qwen2_config(where: str, backbone: dict[str, Any], **overrides: Any) -> Qwen2Config:
    """A backbone dict -> transformers' Qwen2Config with SDPA attention (upstream's default, as the
    checkpoint leaves `attn_implementation` null). Width / head values are checked here."""
    if backbone.get("model_type", "qwen2") != "qwen2":
        raise ValueError(f"{where}.model_type must be 'qwen2', got {backbone.get('model_type')!r}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        _positive_int(f"{where}.{key}", backbone.get(key))
    kv_heads = backbone.get("num_key_value_heads", backbone["num_attention_heads"])
    _positive_int(f"{where}.num_key_value_heads", kv_heads)
    if (
        backbone["hidden_size"] % backbone["num_attention_heads"]
        or backbone["num_attention_heads"] % kv_heads
    ):
        raise ValueError(
            f"{where}.num_attention_heads {backbone['num_attention_heads']} must divide hidden_size "
            f"{backbone['hidden_size']} and be a multiple of num_key_value_heads {kv_heads}"
        )
    data = {k: v for k, v in backbone.items() if k not in ("attn_implementation", "_attn_implementation")}
    hf = Qwen2Config(**{**data, **overrides})
    if hf.sliding_window is not None:
        _positive_int(f"{where}.sliding_window", hf.sliding_window)
    hf._attn_implementation = "sdpa"
    return hf


@dataclass(frozen=True)
class VAEEncoderConfig:
    """`enc_kwargs`: waveform frames of `input_dim` samples every `hop_size` -> latents."""

    input_dim: int
    hop_size: int
    latent_dim: int
    backbone: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEEncoderConfig:
        section = _section(data, "enc_kwargs", ("backbone", "input_dim", "latent_dim"))
        cfg = cls(
            input_dim=_positive_int("enc_kwargs.input_dim", section["input_dim"]),
            hop_size=_positive_int("enc_kwargs.hop_size", section.get("hop_size", _DEFAULT_HOP_SIZE)),
            latent_dim=_positive_int("enc_kwargs.latent_dim", section["latent_dim"]),
            backbone=dict(section["backbone"]),
        )
        cfg.backbone_config()  # validates the backbone
        return cfg

    def backbone_config(self) -> Qwen2Config:
        return qwen2_config("enc_kwargs.backbone", self.backbone)

    def aggregator_config(self) -> Qwen2Config:
        """The patch aggregator: the encoder backbone at 4 layers (upstream overrides the depth)."""
        overrides: dict[str, Any] = {"num_hidden_layers": ENCODER_AGGREGATOR_LAYERS}
        if self.backbone.get("layer_types") is not None:  # upstream shares the encoder's list: its prefix
            overrides["layer_types"] = list(self.backbone["layer_types"])[:ENCODER_AGGREGATOR_LAYERS]
        return qwen2_config("enc_kwargs.backbone", self.backbone, **overrides)


@dataclass(frozen=True)
class VAEDecoderConfig:
    """`dec_kwargs`: latents -> decoder frames of `output_dim` samples (the hop) -> waveform."""

    output_dim: int
    latent_dim: int
    backbone: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEDecoderConfig:
        section = _section(data, "dec_kwargs", ("backbone", "output_dim", "latent_dim"))
        cfg = cls(
            output_dim=_positive_int("dec_kwargs.output_dim", section["output_dim"]),
            latent_dim=_positive_int("dec_kwargs.latent_dim", section["latent_dim"]),
            backbone=dict(section["backbone"]),
        )
        cfg.backbone_config()
        return cfg

    def backbone_config(self) -> Qwen2Config:
        return qwen2_config("dec_kwargs.backbone", self.backbone)


@dataclass(frozen=True)
class AudioVAEConfig:
    """`talker/vae/config.json`. Keys upstream does not read (`architectures`, `dtype`, ...) are ignored."""

    sample_rate: int
    patch_size: int  # latent frame -> decoder frames (linear upsample); -1: none
    encoder: VAEEncoderConfig
    decoder: VAEDecoderConfig

    @property
    def hop(self) -> int:
        """Waveform samples per decoder frame."""
        return self.decoder.output_dim

    @property
    def n_fft(self) -> int:
        return 4 * self.hop

    @property
    def frames_per_latent(self) -> int:
        return max(1, self.patch_size)

    @property
    def samples_per_latent(self) -> int:
        return self.hop * self.frames_per_latent

    @property
    def latent_dim(self) -> int:
        return self.decoder.latent_dim

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioVAEConfig:
        patch = data.get("patch_size", _DEFAULT_PATCH_SIZE)
        if patch != -1:
            _positive_int("patch_size", patch)  # -1 or positive
        cfg = cls(
            sample_rate=_positive_int("sample_rate", data.get("sample_rate", _DEFAULT_SAMPLE_RATE)),
            patch_size=patch,
            encoder=VAEEncoderConfig.from_dict(data),
            decoder=VAEDecoderConfig.from_dict(data),
        )
        if cfg.encoder.latent_dim != cfg.decoder.latent_dim:
            raise ValueError(
                f"enc_kwargs.latent_dim {cfg.encoder.latent_dim} != "
                f"dec_kwargs.latent_dim {cfg.decoder.latent_dim}"
            )
        if patch != -1 and cfg.encoder.backbone_config().num_hidden_layers < ENCODER_AGGREGATOR_LAYERS:
            # upstream's aggregator indexes the encoder config's per-layer types: it cannot be built
            raise ValueError(
                f"enc_kwargs.backbone.num_hidden_layers must be >= {ENCODER_AGGREGATOR_LAYERS} when "
                "patch_size != -1 (upstream builds its 4-layer aggregator from the encoder's config)"
            )
        return cfg
