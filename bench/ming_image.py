"""Ming image-generation benchmark: our generation loop against diffusers' own pipeline, and what
batching concurrent requests in the image stage buys.

Checkpoints (written once under `.bailing/bench/`, fp32, random weights; the thinker is the demo one,
it does not take part): `ming-image-bench`, a Z-Image DiT of dim 256, 4 layers, 4 heads (head dim
64 = axes 16/24/24), caption width 256, VAE channels 16/32/32/32; and the shipped demo heads
(`ming-image-demo`: dim 64, 2 layers), whose forwards are small enough that per-op overhead, not
arithmetic, sets their cost (as for a small batch on a GPU).
(a) one request, the same condition tensors and noise on the same weights: ours = `new_job` ->
    `run_to_end` -> `decode` (DiT + scheduler + CFG + VAE decode to uint8 pixels, what the worker's
    stage and task thread run) vs diffusers' `ZImagePipeline.__call__` with the stock
    `ZImageTransformer2DModel` (prompt_embeds = our caption features, zero negative, Ming's sigmas,
    output_type "np"); runs alternate, median of `repeats`, guidance 2.0; the latents must agree.
(b) throughput: 4 requests through one `ImageStage` (one DiT forward per step for all of them, each
    request's decode + PNG encode in its own thread, as in the worker) submitted together vs the
    same 4 one after another; images/s and the ratio.
Writes bench/results/ming-image[-<device>][-quick].json and prints markdown tables.
Usage: python -m bench.ming_image [--quick] [--json] [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

from bailing.demo.ming import MingDemoSpec, write_ming_checkpoint
from bailing.demo.ming_generation import GenerationDemoSpec
from bench.checkpoints import BENCH_ROOT, publish, stamp_matches
from bench.harness import git_state, log, machine_info, report
from engine.model_loader import resolve_dtype
from models.ming.generation.denoise import run_to_end
from models.ming.generation.generator import ImageGenerator
from workers.image_output import encode_image
from workers.image_stage import ImageStage

WRITER = 1
GUIDANCE = 2.0
CPU = torch.device("cpu")
MODELS = {
    "bench": GenerationDemoSpec(
        dit_dim=256, dit_heads=4, dit_layers=4, axes_dims=(16, 24, 24), caption_dim=256, mlp_hidden=512,
        condition_dim=256, connector_hidden=128, vae_channels=(16, 32, 32, 32),
    ),
    "demo": GenerationDemoSpec(),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sizes:
    cases: tuple[tuple[int, int], ...] = ((512, 4), (512, 8), (672, 4))  # (square side, steps)
    repeats: int = 5
    concurrent: int = 4
    concurrent_side: int = 512
    concurrent_steps: int = 8


FULL = Sizes()
QUICK = Sizes(cases=((512, 2),), repeats=1, concurrent_steps=2)


def ensure_checkpoint(name: str, root: Path = BENCH_ROOT) -> Path:
    spec = MingDemoSpec(image_generation=MODELS[name])
    folder = root / f"ming-image-{name}"
    stamp = {"writer": WRITER, "spec": repr(spec)}
    if stamp_matches(folder, stamp):
        return folder
    tmp = root / f".ming-image-{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"writing {folder.name}")
    write_ming_checkpoint(tmp, spec, dtype=torch.float32)
    return publish(tmp, folder, stamp)


def diffusers_pipeline(folder: Path, device: torch.device, dtype: torch.dtype) -> ZImagePipeline:
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
        vae=AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype).eval(),
        text_encoder=None,
        tokenizer=None,
        transformer=ZImageTransformer2DModel.from_pretrained(
            folder / "transformer", torch_dtype=dtype
        ).eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def condition(gen: ImageGenerator, seed: int) -> torch.Tensor:
    q = gen.config.scales[-1] ** 2
    rows = torch.randn(q, gen.config.condition_dim, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(rows, dim=-1)


def ours(gen: ImageGenerator, cond: torch.Tensor, side: int, steps: int, noise: torch.Tensor):
    job = gen.new_job(cond, height=side, width=side, seeds=[0], steps=steps, guidance=GUIDANCE, latents=noise)
    run_to_end(gen.variant, [job])
    return job.latents, gen.decode(job)


def theirs(pipe: ZImagePipeline, gen: ImageGenerator, cond, side: int, steps: int, noise, output_type="np"):
    with torch.inference_mode():
        pos, neg = [gen.heads.caption(cond)], [gen.heads.caption(torch.zeros_like(cond))]
    return pipe(
        prompt_embeds=pos, negative_prompt_embeds=neg, height=side, width=side, num_inference_steps=steps,
        sigmas=np.linspace(1.0, 0.0, steps).tolist(), guidance_scale=GUIDANCE, latents=noise.clone(),
        output_type=output_type,
    ).images  # fmt: skip


def _sync(gen: ImageGenerator) -> None:
    if gen.device.type == "cuda":
        torch.cuda.synchronize(gen.device)


def loop_case(gen, pipe, side: int, steps: int, repeats: int) -> dict[str, Any]:
    cond = condition(gen, side + steps).to(gen.device)
    noise = torch.randn(1, *gen.latent_shape(side, side), generator=torch.Generator().manual_seed(1))
    noise = noise.to(gen.device)
    latents, _ = ours(gen, cond, side, 1, noise)  # warm-up (both sides)
    theirs(pipe, gen, cond, side, 1, noise)
    a, b = [], []
    for _ in range(repeats):  # alternate, so both see the same machine
        t = time.perf_counter()
        latents, _ = ours(gen, cond, side, steps, noise)
        _sync(gen)
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs(pipe, gen, cond, side, steps, noise)
        _sync(gen)
        b.append(time.perf_counter() - t)
    want = theirs(pipe, gen, cond, side, steps, noise, output_type="latent")
    ours_s, theirs_s = statistics.median(a), statistics.median(b)
    return {
        "side": side, "steps": steps, "ours_s": ours_s, "diffusers_s": theirs_s, "ratio": ours_s / theirs_s,
        "latents_max_diff": float((latents - want).abs().max()),
    }  # fmt: skip


def one_request(stage: ImageStage, gen: ImageGenerator, i: int, sizes: Sizes) -> bytes:
    """What a worker's task thread does once the condition exists: submit, wait, decode, encode."""
    side, steps = sizes.concurrent_side, sizes.concurrent_steps
    cond = condition(gen, 100 + i)
    job = gen.new_job(cond, height=side, width=side, seeds=[i], steps=steps, guidance=GUIDANCE)
    ticket = stage.submit(job, lambda step, steps: None, lambda: False)
    ticket.wait()
    return encode_image(gen.decode(job)[0], "png")


def throughput(gen: ImageGenerator, sizes: Sizes) -> dict[str, Any]:
    stage = ImageStage(gen)
    stage.start()
    try:
        one_request(stage, gen, 0, sizes)  # warm-up
        t = time.perf_counter()
        serial = [one_request(stage, gen, i, sizes) for i in range(sizes.concurrent)]
        serial_s = time.perf_counter() - t
        together: list[bytes | None] = [None] * sizes.concurrent

        def run(i: int) -> None:
            together[i] = one_request(stage, gen, i, sizes)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(sizes.concurrent)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        together_s = time.perf_counter() - t
    finally:
        stage.stop()
    return {
        "requests": sizes.concurrent, "side": sizes.concurrent_side, "steps": sizes.concurrent_steps,
        "serial_s": serial_s, "concurrent_s": together_s, "serial_images_per_s": sizes.concurrent / serial_s,
        "concurrent_images_per_s": sizes.concurrent / together_s, "speedup": serial_s / together_s,
        "same_bytes": serial == together,
    }  # fmt: skip


def run(
    sizes: Sizes,
    device: torch.device = CPU,
    dtype: torch.dtype = torch.float32,
    root: Path = BENCH_ROOT,
    models: tuple[str, ...] = tuple(MODELS),
) -> dict[str, Any]:
    torch.set_grad_enabled(False)
    result: dict[str, Any] = {"git": git_state(), "sizes": dataclasses.asdict(sizes), "models": {}}
    result["device"], result["dtype"] = str(device), str(dtype).removeprefix("torch.")
    for name in models:
        folder = ensure_checkpoint(name, root)
        gen = ImageGenerator.load(folder, device, dtype)
        pipe = diffusers_pipeline(folder, device, dtype)
        cases = [loop_case(gen, pipe, side, steps, sizes.repeats) for side, steps in sizes.cases]
        for c in cases:
            log(f"{name} {c['side']}px x {c['steps']} steps: ours {c['ours_s']:.2f} s, diffusers "
                f"{c['diffusers_s']:.2f} s ({c['ratio']:.3f}x)")  # fmt: skip
        result["models"][name] = {"loop": cases, "throughput": throughput(gen, sizes)}
        log(f"{name} throughput: {result['models'][name]['throughput']['speedup']:.2f}x serial")
    return result


def markdown_table(result: dict[str, Any], machine: dict[str, Any]) -> str:
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['cores']} cores"
    head = f"Machine: {where}, torch {machine['torch']}, {result['dtype']} (git {result['git']})"
    lines = [
        head,
        "",
        "| model | size | steps | ours s/image | diffusers s/image | ours / diffusers | max latent diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        for c in m["loop"]:
            cells = [
                name,
                f"{c['side']}x{c['side']}",
                c["steps"],
                f"{c['ours_s']:.2f}",
                f"{c['diffusers_s']:.2f}",
            ]
            cells += [f"{c['ratio']:.3f}x", f"{c['latents_max_diff']:.1e}"]
            lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    lines += [
        "",
        "| model | requests | size | steps | serial images/s | concurrent images/s | speedup | same bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        t = m["throughput"]
        cells = [name, t["requests"], f"{t['side']}x{t['side']}", t["steps"],
                 f"{t['serial_images_per_s']:.3f}", f"{t['concurrent_images_per_s']:.3f}",
                 f"{t['speedup']:.2f}x", t["same_bytes"]]  # fmt: skip
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: fp32 on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else resolve_dtype(None, device)
    result = run(QUICK if args.quick else FULL, device, dtype)
    machine = machine_info(device)
    result["machine"] = machine
    name = "ming-image" if device.type == "cpu" else f"ming-image-{device.type}"
    report(name, args.quick, result, markdown_table(result, machine), args.json)


if __name__ == "__main__":
    main()
