"""What each rank runs in the tensor/expert-parallel tests (module-level, so spawned ranks import it).

`golden_and_engine_runs` runs both of these in one group (one process start-up per layout).
`golden_logits(group)` loads the Ling, LLaDA2 and Ming golden checkpoints as this rank's share and
returns, on rank 0, the full logits of every golden input (the other ranks None, after taking part
in every collective), with the bytes of Ling's parameters this rank holds. The same function with
the single-rank group gives the reference. `engine_runs(group, ...)` serves the same checkpoints
through LLM / LLMEngine with rank 0 scheduling and sampling and the others following.
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


def _engine_models(confident_llada2: str) -> list[tuple[str, dict]]:
    """(checkpoint, engine config) of every engine run, in the order rank 0 serves them."""
    return [
        (str(GOLDEN_LING / "tiny-bailing"), {}),
        (str(LLADA2), {"block_size": 4, "max_num_batched_tokens": 64}),
        (confident_llada2, {"block_size": 4, "max_num_batched_tokens": 64}),
        (str(MING), {"max_num_seqs": 8, "num_kv_blocks": 64}),
    ]


def golden_and_engine_runs(group: TensorGroup, confident_llada2: str) -> tuple:
    """Both cases in one group (one set of processes): (logits or None, Ling bytes, engine runs or None)."""
    logits, nbytes = golden_logits(group)
    return logits, nbytes, engine_runs(group, confident_llada2)


def engine_runs(group: TensorGroup, confident_llada2: str) -> dict | None:
    """Every model served by an engine whose model is split over `group`: rank 0 runs the requests
    (golden greedy runs, seeded samples, scoring) and returns what came out; the others follow."""
    from engine.engine import EngineConfig

    models = _engine_models(confident_llada2)
    if not group.is_first:
        from engine.parallel.followers import serve_as_follower

        for path, config in models:
            serve_as_follower(path, CPU, torch.float32, EngineConfig(**config).kv_spec, group)
        return None
    from engine import LLM

    (ling, ling_cfg), (llada, llada_cfg), (confident, _), (ming, ming_cfg) = models
    out: dict = {}
    with LLM(ling, dtype=torch.float32, group=group, **ling_cfg) as llm:
        out["ling.greedy"] = _ling_runs(llm)
    for name, path in (("random", llada), ("confident", confident)):
        with LLM(path, dtype=torch.float32, group=group, **llada_cfg) as llm:
            out[f"llada2.{name}"] = _llada2_runs(llm, name)
    with LLM(ming, dtype=torch.float32, group=group, **ming_cfg) as llm:
        out["ming"] = _ming_runs(llm)
    return out


def _ling_runs(llm) -> dict:
    from engine import SamplingParams

    ref = load_file(GOLDEN_LING / "logits.safetensors")
    prompt = ref["gen_prompt_ids"][0].tolist()
    greedy = llm.generate([prompt], SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))[0]
    sampled = llm.generate(
        [prompt], SamplingParams(n=3, max_tokens=8, temperature=1.0, seed=5, ignore_eos=True)
    )[0]
    return {
        "tokens": greedy.token_ids,
        "samples": [c.token_ids for c in sampled.choices],
        "logits": llm.logits(ref["input_ids_0"][0].tolist()),
    }


def _llada2_runs(llm, name: str) -> dict:
    from engine import SamplingParams
    from tests.models.llada2_golden import expected, run_params

    golden = expected()
    runs = {}
    for run in golden["generations"]:
        if run["tag"].startswith(name) and run["tag"].endswith("_greedy"):
            params = SamplingParams(
                max_tokens=run["args"]["gen_length"], temperature=0.0, diffusion=run_params(run)
            )
            (o,) = llm.generate([golden["inputs"]["prompt"]], params)
            runs[run["tag"]] = (o.token_ids, o.num_forwards)
    return runs


def _ming_runs(llm) -> dict:
    from engine import SamplingParams
    from engine.multimodal import MediaInputs

    def suppress(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        logits[[998, 999]] = float("-inf")
        return logits

    tensors = load_file(GOLDEN_MING / "inputs.safetensors")
    params = SamplingParams(temperature=0.0, max_tokens=8, logits_processors=[suppress])
    out = {}
    for case in MING_CASES:
        found = media(tensors, case)
        (o,) = llm.generate(
            [tensors[f"{case}.input_ids"][0].tolist()], params, media=MediaInputs(found) if found else None
        )
        out[case] = o.token_ids
    return out


def load_rss(group: TensorGroup, folder: str) -> dict[str, int]:
    """Load this rank's share of `folder`; resident bytes before, peak during (VmHWM) and after."""
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    model = load_model(folder, CPU, torch.float32, group)
    final = proc.memory_info().rss
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM"))
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"base": base, "final": final, "peak": int(hwm.split()[1]) * 1024, "held": held}


@torch.inference_mode()
def ling_logits_on_gpu(group: TensorGroup) -> torch.Tensor | None:
    """The Ling golden logits of input 0 with this rank's share on its own GPU (NCCL)."""
    device = torch.device("cuda", torch.cuda.current_device())
    ling = load_model(GOLDEN_LING / "tiny-bailing", device, torch.float32, group)
    ids = load_file(GOLDEN_LING / "logits.safetensors")["input_ids_0"][0].to(device)
    logits = ling.compute_logits(ling(ids, torch.arange(len(ids), device=device)))
    return logits.cpu() if group.is_first else None


@torch.inference_mode()
def fp8_logits(group: TensorGroup | None, folder: str, ids: list[int]) -> tuple[torch.Tensor | None, int]:
    """Logits of `ids` from an FP8 folder loaded as $BAILING_FP8_WEIGHTS says, with how many of this
    rank's layers hold FP8 weights."""
    from engine.parallel.group import SINGLE

    group = group or SINGLE
    model = load_model(folder, CPU, torch.float32, group)
    kept = sum(1 for m in model.modules() if getattr(m, "fp8_block", None) is not None)
    x = torch.tensor(ids)
    logits = model.compute_logits(model(x, torch.arange(len(ids))))
    return (logits if group.is_first else None), kept
