"""A tiny Ming Preview (SD3 DiT) checkpoint in the upstream layout, written for the tests.

`write_tiny_sd3(root)` copies the golden ming-gen-tiny root config, `connector/`, `vae/` and `scheduler/`
as they are, rewrites `mlp/` for the SD3 variant (same query tokens and projections, a condition MLP
whose output width is the DiT's joint_attention_dim, `config.json` with dit_type "sd3"), and saves a
random `MingSD3Transformer` under `transformer/` as upstream saves it (`_class_name`
"SD3Transformer2DModel", one safetensors file). Scheduler variants live under `variants/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.ming.generation.condition import ToClipMLP
from models.ming.generation.sd3 import MingSD3Transformer
from tests.models.ming.gen_golden import GEN_GOLDEN, STATIC_SCHEDULER

CONDITION_DIM = 40  # the golden proj_out width (diffusion_c_input_dim)
HEIGHT, WIDTH = 64, 96  # latent 8 x 12, 4 x 6 tokens
# Every optional path on: qk RMS norms, a dual-attention block (its image-only attn2 takes a cut rope).
DIT_CONFIG = {
    "sample_size": 16, "patch_size": 2, "in_channels": 16, "num_layers": 2, "num_refiner_layers": 2,
    "attention_head_dim": 64, "num_attention_heads": 2, "joint_attention_dim": 64,
    "caption_projection_dim": 128, "pooled_projection_dim": 32, "out_channels": 16,
    "pos_embed_max_size": 16, "dual_attention_layers": [0], "qk_norm": "rms_norm",
    "vae_ref_channel_cat": False, "directvlm_attention_dim": 2048, "rope_max_index": 64,
}  # fmt: skip
MLP_HIDDEN = 48


def nontrivial_(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Default init, then (as the golden set does) all-ones parameters -> 1 + 0.1·N(0,1) and all-zeros
    parameters -> 0.1·N(0,1), so no gate, norm or bias is inert."""
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            noise = 0.1 * torch.randn(p.shape, generator=generator)
            if torch.all(p == 1):
                p.copy_(1 + noise)
            elif torch.all(p == 0):
                p.copy_(noise)
    return module


def random_dit(seed: int = 0, **changes) -> MingSD3Transformer:
    torch.manual_seed(seed)
    dit = MingSD3Transformer(**(DIT_CONFIG | changes))
    return nontrivial_(dit, torch.Generator().manual_seed(seed + 1)).eval()


def write_dit(folder: Path, dit: MingSD3Transformer) -> None:
    """`transformer/` as upstream's save_pretrained leaves it: its class name, its config, one file."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in dit.config.items() if not k.startswith("_")}
    config = {"_class_name": "SD3Transformer2DModel", "_diffusers_version": "0.36.0", **config}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in dit.state_dict().items()}
    save_file(state, folder / "diffusion_pytorch_model.safetensors")


def write_mlp(folder: Path, out_dim: int, hidden: int, seed: int) -> None:
    """The golden `mlp/` with the condition MLP replaced by one of widths condition -> hidden -> out."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v
        for k, v in load_file(GEN_GOLDEN / "mlp" / "model.safetensors").items()
        if not k.startswith("mlp.")
    }
    torch.manual_seed(seed)
    mlp = nontrivial_(ToClipMLP(CONDITION_DIM, hidden, out_dim), torch.Generator().manual_seed(seed + 1))
    state |= {f"mlp.{k}": v.contiguous() for k, v in mlp.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    config = {"diffusion_c_input_dim": CONDITION_DIM, "img_gen_scales": [2, 4], "dit_type": "sd3",
              "use_identity_mlp": False, "text_encoder_norm": False}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def write_schedulers(root: Path) -> None:
    """scheduler/ (dynamic shift, max_shift 1.15) and variants: static shift, and dynamic without a
    max_shift key (the pipeline would fall back to 1.16; the scheduler fills in its own 1.15 first)."""
    shutil.copytree(GEN_GOLDEN / "scheduler", root / "scheduler")
    shutil.copytree(STATIC_SCHEDULER, root / "variants" / "static_shift" / "scheduler")
    default = root / "variants" / "default_max_shift" / "scheduler"
    default.mkdir(parents=True)
    config = json.loads((GEN_GOLDEN / "scheduler" / "scheduler_config.json").read_text())
    del config["max_shift"]
    (default / "scheduler_config.json").write_text(json.dumps(config, indent=2))


def write_tiny_sd3(root: Path, seed: int = 0, mlp_hidden: int = MLP_HIDDEN, **dit_changes) -> Path:
    """A complete tiny Preview checkpoint at `root` (made writable); `dit_changes` override DIT_CONFIG."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(GEN_GOLDEN / "config.json", root / "config.json")
    for part in ("connector", "vae"):
        shutil.copytree(GEN_GOLDEN / part, root / part)
    write_schedulers(root)
    dit = random_dit(seed, **dit_changes)
    write_dit(root / "transformer", dit)
    write_mlp(root / "mlp", dit.config.joint_attention_dim, mlp_hidden, seed + 10)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root
