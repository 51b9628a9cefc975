"""Write `ming2_vit_golden.safetensors`: a tiny Ming 2.0 ViT run by the upstream code itself.

The upstream module is not part of this repository. Fetch it into a scratch folder and point this
script at it (the file is Ant Group's public Ming release, commit 2a0c02a, 2026-02-12):

    mkdir -p /tmp/ming2_upstream
    git -C <mirror of inclusionAI/Ming (flash-omni 2.0)> show 2a0c02a:qwen3_moe_vit.py \\
        > /tmp/ming2_upstream/qwen3_moe_vit.py
    .venv/bin/python tests/models/ming/make_ming2_vit_golden.py /tmp/ming2_upstream

It builds upstream's `Qwen3MoeVisionTransformer(Qwen3VLMoeVisionConfig(**CONFIG), use_deepstack=True)`
on the CPU in float32 with eager attention (upstream pins flash_attention_2 in its attention class;
the math is the same), fills every parameter with seeded noise rounded to bfloat16 (so the file can
store it losslessly in half the bytes), runs it on seeded bf16-rounded pixels for the grids in
GRIDS, and stores: `weight.<upstream parameter name>` (bf16), `pixel_values` (bf16), `grid_thw`,
`merged` (the main merger's output, what the thinker projects) and `deepstack.<j>` (deepstack
merger j's output, which the thinker discards), with CONFIG and versions in the metadata.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).with_name("ming2_vit_golden.safetensors")
UPSTREAM_COMMIT = "2a0c02ae3130190160c215f89fce7de3005db483"
# 2.0's vision_config at tiny sizes; deepstack after blocks 0 and 2 (not contiguous on purpose).
CONFIG = {
    "depth": 3,
    "hidden_size": 16,
    "num_heads": 2,
    "intermediate_size": 24,
    "hidden_act": "gelu_pytorch_tanh",
    "in_channels": 3,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 64,
    "out_hidden_size": 24,
    "deepstack_visual_indexes": [0, 2],
}
# (t, h, w) in patches: wide, a 2-frame clip, tall; h, w resample the 8 x 8 position table.
GRIDS = [[1, 2, 4], [2, 2, 2], [1, 4, 2]]
SEED = 20260212


def random_value(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Seeded noise, rounded to bf16: norms near 1, biases small, matrices / fan-in ** 0.5."""
    noise = torch.randn(shape, generator=generator)
    if name.endswith("norm.weight"):
        value = 1.0 + 0.1 * noise
    elif len(shape) == 1:
        value = 0.1 * noise
    else:
        value = noise / math.prod(shape[1:]) ** 0.5
    return value.bfloat16().float()


def build_upstream(folder: Path) -> torch.nn.Module:
    sys.path.insert(0, str(folder))
    upstream = importlib.import_module("qwen3_moe_vit")
    model = upstream.Qwen3MoeVisionTransformer(
        upstream.Qwen3VLMoeVisionConfig(**CONFIG), use_deepstack=True
    ).eval()
    model.config._attn_implementation = "eager"  # shared by every block's attention
    return model


def main(folder: Path) -> None:
    model = build_upstream(folder)
    generator = torch.Generator().manual_seed(SEED)
    weights = {}
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            weights[name] = random_value(name, tuple(param.shape), generator)
            param.copy_(weights[name])
        grid = torch.tensor(GRIDS, dtype=torch.long)
        rows = int(grid.prod(-1).sum())
        pixels = torch.randn(rows, 3 * 2 * 16 * 16, generator=generator).bfloat16().float()  # (P, 1536)
        merged, deepstack = model(pixels, grid_thw=grid)
    tensors = {f"weight.{k}": v.bfloat16() for k, v in weights.items()}
    tensors.update(pixel_values=pixels.bfloat16(), grid_thw=grid, merged=merged.contiguous())
    tensors.update({f"deepstack.{j}": d.contiguous() for j, d in enumerate(deepstack)})
    import transformers

    metadata = {
        "config": json.dumps(CONFIG),
        "upstream": f"inclusionAI/Ming qwen3_moe_vit.py @ {UPSTREAM_COMMIT}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): merged {tuple(merged.shape)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_ming2_vit_golden.py <folder holding upstream qwen3_moe_vit.py>")
    main(Path(sys.argv[1]))
