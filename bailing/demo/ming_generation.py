"""Write random-weight Ming image-generation heads beside a demo thinker, in the 2.0 upstream layout.

Folders (ming_generation.md 1.4): `mlp/` (config.json with dit_type "zimage"; model.safetensors with
`query_tokens_dict.{s}x{s}`, `proj_in.*`, `proj_out.*`, `mlp.*`), `connector/` (a Qwen2ForCausalLM
folder), `transformer/` (a ZImageTransformer2DModel folder), `vae/` (AutoencoderKL), `scheduler/`
(FlowMatchEulerDiscreteScheduler with dynamic shifting). The library parts are built from their
configs with a seeded init; each folder gets its library's own config file (`save_config` /
`PretrainedConfig.save_pretrained`) and its weights under the library's file name, in `dtype`.
The weights are random: images come out as noise, by design.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from bailing.demo.safetensors_writer import write_safetensors_checkpoint
from bailing.demo.tokenizer import write_json


@dataclasses.dataclass(frozen=True)
class GenerationDemoSpec:
    """Sizes of the tiny generation heads (the DiT's head dim = sum(axes_dims))."""

    scales: tuple[int, ...] = (2, 4)
    condition_dim: int = 32
    connector_hidden: int = 32
    connector_layers: int = 2
    mlp_hidden: int = 48
    caption_dim: int = 32
    dit_dim: int = 64
    dit_heads: int = 2
    dit_layers: int = 2
    axes_dims: tuple[int, int, int] = (8, 12, 12)
    vae_channels: tuple[int, ...] = (8, 16, 16, 16)

    def __post_init__(self) -> None:
        if self.dit_dim % self.dit_heads or self.dit_dim // self.dit_heads != sum(self.axes_dims):
            raise ValueError("GenerationDemoSpec: dit_dim / dit_heads must equal sum(axes_dims)")


def write_generation_heads(
    out: Path, llm_hidden: int, spec: GenerationDemoSpec, *, seed: int, dtype: torch.dtype
) -> None:
    """Write mlp/, connector/, transformer/, vae/ and scheduler/ under the thinker folder `out`."""
    torch.manual_seed(seed)
    _write_connector(out / "connector", spec, dtype)
    _write_mlp(out / "mlp", llm_hidden, spec, dtype)
    dit = ZImageTransformer2DModel(
        in_channels=16, dim=spec.dit_dim, n_layers=spec.dit_layers, n_refiner_layers=1,
        n_heads=spec.dit_heads, n_kv_heads=spec.dit_heads, cap_feat_dim=spec.caption_dim,
        axes_dims=list(spec.axes_dims), axes_lens=[1024, 512, 512],
    )  # fmt: skip
    _wake(dit)
    _save_diffusers(dit, out / "transformer", dtype)
    n = len(spec.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=list(spec.vae_channels),
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        layers_per_block=1, norm_num_groups=8, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    _save_diffusers(vae, out / "vae", dtype)
    FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    ).save_pretrained(out / "scheduler")  # fmt: skip


def _write_connector(folder: Path, spec: GenerationDemoSpec, dtype: torch.dtype) -> None:
    config = Qwen2Config(
        vocab_size=32, hidden_size=spec.connector_hidden, intermediate_size=2 * spec.connector_hidden,
        num_hidden_layers=spec.connector_layers, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )  # fmt: skip
    config.architectures = ["Qwen2ForCausalLM"]
    config.save_pretrained(folder)
    write_safetensors_checkpoint(folder, Qwen2ForCausalLM(config).state_dict(), dtype=dtype)


def _write_mlp(folder: Path, llm_hidden: int, spec: GenerationDemoSpec, dtype: torch.dtype) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", {
        "diffusion_c_input_dim": spec.condition_dim, "img_gen_scales": list(spec.scales),
        "dit_type": "zimage", "use_identity_mlp": False, "text_encoder_norm": False,
    })  # fmt: skip
    state = {
        f"query_tokens_dict.{s}x{s}": F.normalize(torch.randn(s * s, llm_hidden), dim=-1) for s in spec.scales
    }
    for name, (rows, cols) in {
        "proj_in": (spec.connector_hidden, llm_hidden),
        "proj_out": (spec.condition_dim, spec.connector_hidden),
        "mlp.fc1": (spec.mlp_hidden, spec.condition_dim),
        "mlp.fc2": (spec.caption_dim, spec.mlp_hidden),
    }.items():
        state[f"{name}.weight"] = torch.randn(rows, cols) / cols**0.5
        state[f"{name}.bias"] = 0.1 * torch.randn(rows)
    for name, width in (("mlp.layer_norm1", spec.mlp_hidden), ("mlp.layer_norm2", spec.caption_dim)):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(width)
        state[f"{name}.bias"] = 0.1 * torch.randn(width)
    write_safetensors_checkpoint(folder, state, dtype=dtype, max_shard_bytes=None)


def _save_diffusers(model: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """A diffusers model folder: config.json (with `_class_name`) + diffusion_pytorch_model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    (folder / "diffusion_pytorch_model.safetensors").chmod(0o644)


@torch.no_grad()
def _wake(module: torch.nn.Module) -> None:
    """Give zero-initialised parameters (adaLN gates, pad tokens) small random values, so every path
    of the random DiT carries signal (as the golden checkpoint's generator does)."""
    for p in module.parameters():
        if not p.any():
            p.copy_(0.1 * torch.randn_like(p))
