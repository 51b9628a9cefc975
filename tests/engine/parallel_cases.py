"""What each rank runs in the tensor/expert-parallel tests (module-level, so spawned ranks import it).

`golden_logits(group)` loads the Ling, LLaDA2 and Ming golden checkpoints as this rank's share and
returns, on rank 0, the full logits of every golden input (the other ranks None, after taking part
in every collective), with the bytes of Ling's parameters this rank holds. The same function with
the single-rank group gives the reference.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from engine.layers.attention import BlockCausalContext
from engine.model_loader import load_model
from engine.parallel.group import TensorGroup
from tests.conftest import GOLDEN_LING
from tests.models.llada2_golden import CHECKPOINT as LLADA2
from tests.models.llada2_golden import GOLDEN_LLADA2
from tests.models.ming.ming_golden import GOLDEN as GOLDEN_MING
from tests.models.ming.ming_golden import TINY as MING
from tests.models.ming.ming_golden import media

CPU = torch.device("cpu")
MING_CASES = ("text", "image")


@torch.inference_mode()
def golden_logits(group: TensorGroup) -> tuple[dict[str, torch.Tensor] | None, int]:
    out: dict[str, torch.Tensor] = {}
    ling = load_model(GOLDEN_LING / "tiny-bailing", CPU, torch.float32, group)
    ling_bytes = sum(p.numel() * p.element_size() for p in ling.parameters())
    ref = load_file(GOLDEN_LING / "logits.safetensors")
    for i in range(3):
        ids = ref[f"input_ids_{i}"][0]
        out[f"ling.{i}"] = ling.compute_logits(ling(ids, torch.arange(len(ids))))
    llada = load_model(LLADA2, CPU, torch.float32, group)
    ref = load_file(GOLDEN_LLADA2 / "logits.safetensors")
    for i in range(2):
        ids = ref[f"input_ids_{i}"]
        for kind, block in (("blockcausal", 8), ("bidirectional", None)):
            hidden = llada(ids, torch.arange(len(ids)), BlockCausalContext(block))
            out[f"llada2.{kind}.{i}"] = llada.compute_logits(hidden)
    ming = load_model(MING, CPU, torch.float32, group)
    tensors = load_file(GOLDEN_MING / "inputs.safetensors")
    for case in MING_CASES:
        prompt = ming.prepare_prompt(tensors[f"{case}.input_ids"], **media(tensors, case))
        out[f"ming.{case}"] = ming.compute_logits(ming(prompt.ids, **prompt.forward_args()))
    return (out if group.is_first else None), ling_bytes
