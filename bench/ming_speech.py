"""Ming speech benchmark: SynthesizeSpeechStream through the whole service against the same modules in a
plain loop, for one request and for 4 concurrent ones.

Checkpoint: the demo Ming-flash-omni 2.0 (`bailing init-demo`'s `ming2`: tiny random talker, AudioVAE,
CAM++, voices), written once under `.bailing/bench/ming2-speech`. Every request says its own text
(two segments) with the default voice, a fixed seed and "pcm" out.
(a) plain loop, in this process, no service: per request and segment `SpeechModel.talker_inputs` ->
    `TalkerGenerator` stepped alone -> `SegmentAudio` (the VAE stream on the worker's decode schedule,
    silence trim) -> `AudioEncoder`; time to first audio = the first encoded samples. 4 requests run
    one after another (the serial baseline).
(b) the service: Valkey + `bailing worker --family ming` + `bailing gateway` subprocesses, a grpc.aio
    client streaming; time to first audio = the first SpeechChunk. 1 request alone, then 4 at once
    (the speech stage steps them in one talker forward).
Rounds alternate (a) and (b); medians over rounds. Reported per case: wall time, audio seconds, the
real-time factor (audio seconds per wall second), time to first audio; and the ratios the issue sets
targets for: service time / plain time for one request (<= 1.1), and the throughput of 4 concurrent
service requests / the plain loop's serial throughput (>= 2).
Writes bench/results/ming-speech[-quick].json and prints a markdown table.
Usage: python -m bench.ming_speech [--quick] [--json] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bailing.demo.ming2 import write_ming2_checkpoint
from bench.checkpoints import BENCH_ROOT
from bench.harness import git_state, log, machine_info, report
from bench.service_stack import Service
from models.ming.speech.speech_model import SpeechModel
from models.ming.speech.talker_generator import TalkerGenerator, TalkerRequest
from pipelines import speech_text
from pipelines.audio_output import AudioEncoder
from pipelines.protocol import SpeechOptions
from pipelines.speech_synthesis import SpeechLimits, settings
from workers.speech_decode import SegmentAudio

CHECKPOINT = BENCH_ROOT / "ming2-speech"
MODEL = "ming2"
CONCURRENT = 4
TEXTS = (
    "The morning was quiet. Birds sang over the river.",
    "We walked along the shore. The water was cold and clear.",
    "She opened the window. A warm wind came into the room.",
    "The train left at noon. It reached the city before dark.",
    "He made tea for everyone. Then they talked until late.",
    "Rain fell all afternoon. The streets shone under the lamps.",
    "The market was busy today. People bought fruit and bread.",
    "Snow covered the hills. Children ran out to play in it.",
)


def request_text(i: int, sentences: int = 4) -> str:
    """The first `sentences` of texts i and i + 3 (each sentence is its own segment): 4 are long enough
    that a request's fixed costs do not decide."""
    both = f"{TEXTS[i % len(TEXTS)]} {TEXTS[(i + 3) % len(TEXTS)]}"
    parts = [p.strip() for p in both.replace(". ", ".|").split("|")]
    return " ".join(parts[:sentences])


@dataclasses.dataclass(frozen=True)
class Sizes:
    rounds: int = 5
    sentences: int = 4  # per request


QUICK = Sizes(rounds=1, sentences=1)


def ensure_checkpoint() -> Path:
    if not (CHECKPOINT / "talker").is_dir():
        log(f"writing the demo ming2 checkpoint to {CHECKPOINT}")
        write_ming2_checkpoint(CHECKPOINT, seed=4)
    return CHECKPOINT


# ---------------------------------------------------------------- (a) the plain loop
def plain_request(model: SpeechModel, generator: TalkerGenerator, text: str, seed: int) -> dict[str, float]:
    """One request, start to end, with nothing but the modules: (wall s, first audio s, audio s)."""
    start = time.perf_counter()
    s = settings(SpeechOptions(seed=seed, format="pcm"), model, SpeechLimits())
    encoder = AudioEncoder(model.sample_rate, s.sample_rate, s.format, s.speed)
    first, samples = None, 0
    for index, segment in enumerate(speech_text.segments(text)):
        inputs = model.talker_inputs(segment, s.voice, s.instruction)
        limit = speech_text.max_patches(segment, model.seconds_per_patch)
        request = TalkerRequest(
            inputs.inputs_embeds, inputs.history, sampling=s.sampling, max_steps=limit,
            generator=torch.Generator().manual_seed(s.segment_seed(index)),
        )  # fmt: skip
        batch, audio = generator.start([request]), SegmentAudio(model)
        while not batch.done:
            step = generator.step(batch)
            wav = audio.add(step.latents[0], step.finished[0])
            if wav is not None:
                encoded = encoder.encode(wav, False)
                samples += encoded.samples
                if first is None and encoded.data:
                    first = time.perf_counter() - start
    samples += encoder.encode(np.zeros(0, np.float32), True).samples
    return {"wall_s": time.perf_counter() - start, "ttfa_s": first or 0.0, "audio_s": samples / s.sample_rate}


def run_plain(model: SpeechModel, texts: list[str]) -> dict[str, Any]:
    generator = TalkerGenerator(model.talker)
    start = time.perf_counter()
    each = [plain_request(model, generator, text, seed=7 + i) for i, text in enumerate(texts)]
    return _summary(time.perf_counter() - start, each)


# ---------------------------------------------------------------- (b) the service
async def _one_stream(stub: Any, pb: Any, text: str, seed: int, start: float) -> dict[str, float]:
    first, audio_s = None, 0.0
    request = pb.SynthesizeSpeechRequest(model=MODEL, text=text, seed=seed, format="pcm")
    async for chunk in stub.SynthesizeSpeechStream(request):
        if chunk.last:
            audio_s = chunk.summary.duration_s
        elif first is None:
            first = time.perf_counter() - start
    return {"wall_s": time.perf_counter() - start, "ttfa_s": first or 0.0, "audio_s": audio_s}


async def _streams(address: str, texts: list[str], concurrent: bool) -> dict[str, Any]:
    import grpc

    from gateway.api import pb, pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        start = time.perf_counter()
        if concurrent:
            each = await asyncio.gather(
                *(_one_stream(stub, pb, t, 7 + i, start) for i, t in enumerate(texts))
            )
        else:
            each = []
            for i, text in enumerate(texts):
                begun = time.perf_counter()
                one = await _one_stream(stub, pb, text, 7 + i, begun)
                each.append(one)
        return _summary(time.perf_counter() - start, list(each))


def run_service(address: str, texts: list[str], concurrent: bool) -> dict[str, Any]:
    return asyncio.run(_streams(address, texts, concurrent))


def _summary(wall: float, each: list[dict[str, float]]) -> dict[str, Any]:
    audio = sum(e["audio_s"] for e in each)
    return {
        "wall_s": wall,
        "audio_s": audio,
        "rtf": audio / wall,
        "ttfa_s": statistics.median(e["ttfa_s"] for e in each),
        "requests": len(each),
    }


# ---------------------------------------------------------------- the benchmark
CASES = ("plain-1", "service-1", "plain-serial-4", "service-serial-4", "service-concurrent-4")


def run_benchmark(sizes: Sizes, checkpoint: Path | None = None) -> dict[str, Any]:
    checkpoint = checkpoint or ensure_checkpoint()
    model = SpeechModel.load(checkpoint, "cpu", torch.float32)
    service = Service(checkpoint, ("--dtype", "float32"), family="ming", name=MODEL)
    log("starting valkey + worker + gateway")
    service.start()
    rounds: list[dict[str, Any]] = []
    try:
        run_service(service.address, [TEXTS[-1]], False)  # warm both sides
        run_plain(model, [TEXTS[-1]])
        for r in range(sizes.rounds):
            texts = [request_text(r + i, sizes.sentences) for i in range(CONCURRENT)]
            one = {
                "plain-1": run_plain(model, texts[:1]),
                "service-1": run_service(service.address, texts[:1], False),
                "plain-serial-4": run_plain(model, texts),
                "service-serial-4": run_service(service.address, texts, False),
                "service-concurrent-4": run_service(service.address, texts, True),
            }
            log(f"round {r}: " + ", ".join(f"{k} {v['wall_s']:.2f} s" for k, v in one.items()))
            rounds.append(one)
    finally:
        service.stop()
    medians = {
        case: {key: statistics.median(rd[case][key] for rd in rounds) for key in rounds[0][case]}
        for case in CASES
    }
    ratios = {
        "service_over_plain_time_1": statistics.median(
            rd["service-1"]["wall_s"] / rd["plain-1"]["wall_s"] for rd in rounds
        ),
        "concurrent_4_over_plain_serial_throughput": statistics.median(
            rd["service-concurrent-4"]["rtf"] / rd["plain-serial-4"]["rtf"] for rd in rounds
        ),
        "concurrent_4_over_service_serial_throughput": statistics.median(
            rd["service-concurrent-4"]["rtf"] / rd["service-serial-4"]["rtf"] for rd in rounds
        ),
    }
    return {"cases": medians, "ratios": ratios, "rounds": rounds, "sizes": dataclasses.asdict(sizes)}


def markdown_table(result: dict[str, Any], machine: dict[str, Any]) -> str:
    c, r = result["cases"], result["ratios"]
    rows = [
        f"Machine: {machine['cpu']} ({machine['threads']} threads), float32; checkpoint: demo ming2 "
        f"(tiny random talker + AudioVAE); median of {result['sizes']['rounds']} rounds",
        "",
        "| case | requests | wall s | audio s | RTF (audio s / wall s) | time to first audio s |",
        "|---|---|---|---|---|---|",
    ]
    for case in CASES:
        v = c[case]
        rows.append(
            f"| {case} | {v['requests']:.0f} | {v['wall_s']:.2f} | {v['audio_s']:.2f} | {v['rtf']:.2f} "
            f"| {v['ttfa_s']:.3f} |"
        )
    rows += [
        "",
        f"- one request, service time / plain-loop time: **{r['service_over_plain_time_1']:.2f}x** "
        "(target <= 1.1)",
        f"- 4 concurrent through the service vs the plain loop's serial throughput: "
        f"**{r['concurrent_4_over_plain_serial_throughput']:.2f}x** (target >= 2); vs the service serial: "
        f"{r['concurrent_4_over_service_serial_throughput']:.2f}x",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, one sentence per request")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    machine = machine_info(torch.device("cpu"))
    result = run_benchmark(sizes)
    result.update(machine=machine, git=git_state())
    report("ming-speech", args.quick, result, markdown_table(result, machine), args.json)


if __name__ == "__main__":
    main()
