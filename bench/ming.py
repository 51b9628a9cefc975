"""Ming benchmark: what images, audio and video cost on the shared engine, and whether running the media
encoders outside the engine loop (our design) keeps text streams flowing while images arrive.

Checkpoint (`.bailing/bench/ming-bench`, written once by the demo writer; random fp32 weights): a
Ming-flash-omni Preview thinker whose LLM is the engine benchmark's shape (bench/engine.py BENCH_SPEC:
8 layers, hidden 512, 32 experts top-4, head_dim 64 with partial rotary 1.0 = VideoRoPE's 64) on the
2k demo vocabulary, a ViT of depth 8, hidden 256, 4 heads, MLP 512, window 112 (full attention every
4th block), images up to 448x448, and a Whisper encoder of 4 layers, width 256. Media are synthesised
here (seeded noise JPEGs, tone WAVs, gradient MP4s). One engine (max_num_seqs 32) for all scenarios;
its prefix cache is emptied before every timed run. One warm-up per scenario.
(a) per medium: a 224x224 and a 448x448 JPEG, 5 s and 30 s of WAV, a 4 s MP4 at 2 fps (224x224), and
    a text-only chat -> prompt tokens, processor ms (decode, resize / mel), encoder ms
    (`engine.encode_media`), TTFT of the request alone (prefill; media already encoded), decode ms/token;
    median of `repeats`;
(b) encoders vs the loop: 4 text streams decode (loop thread, 96 tokens each) while 8 448x448 image
    requests arrive from 4 threads. Ours: processor + `encode_media` in the caller's thread, then
    `add_request(media=state)`. Baseline (a server that encodes inside its step): the same work inside
    `engine.holding_steps()`, so no step runs meanwhile. Text inter-token latency p50 / p99 / max, time
    the loop was held off between steps (total, longest; steps timed by wrapping `engine.step`), image
    TTFT from arrival (processing and encoding included), scenario wall time; sides alternate, twice;
(c) mixed batching: 8 image (448x448, pre-encoded) + 8 text requests, 32 greedy tokens each, submitted
    at once (continuous batching mixes them in the same steps) vs one at a time -> generated tokens/s;
    the two runs must give identical tokens.
Writes bench/results/ming[-quick].json and prints markdown tables.
Usage: python -m bench.ming [--quick] [--json] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile
import torch
from PIL import Image

from bailing.demo.ming import MingDemoSpec, write_ming_checkpoint
from bench.checkpoints import BENCH_ROOT, BENCH_SPEC, publish, stamp_matches
from bench.harness import git_state, log, machine_info, report
from engine.engine import EngineConfig, LLMEngine
from engine.multimodal import MediaInputs, MediaState
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from models.ming.processing import MingProcessor

WRITER = 1
BENCH_MING = MingDemoSpec(
    llm=dataclasses.replace(BENCH_SPEC, partial_rotary_factor=1.0),  # rotary dim 64, as VideoRoPE needs
    vision_depth=8, vision_hidden_size=256, vision_num_heads=4, vision_intermediate_size=512,
    vision_window_size=112, vision_full_attention_every=4, audio_n_state=256, audio_n_head=4, audio_n_layer=4,
    max_pixels=448 * 448,
)  # fmt: skip
ENGINE = EngineConfig(max_num_seqs=32)
PROMPT_IDS = (100, 2000)  # text prompts: random ids the demo vocabulary spells


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Media sizes and request counts of one run; (a), (b), (c) name the scenario a field belongs to."""

    image_sides: tuple[int, ...] = (224, 448)
    audio_seconds: tuple[float, ...] = (5.0, 30.0)
    video: tuple[float, int, int] = (4.0, 2, 224)  # seconds, fps, frame side
    repeats: int = 3
    decode_tokens: int = 16
    streams: int = 4  # (b) text streams
    stream_tokens: int = 96
    text_prompt: int = 32
    burst_images: int = 8
    burst_threads: int = 4
    burst_side: int = 448
    image_tokens: int = 8  # (b) new tokens per image request
    rounds: int = 2  # (b) ours / baseline pairs
    mixed: int = 8  # (c) image requests, and as many text requests
    mixed_side: int = 448
    mixed_tokens: int = 32


FULL = Sizes()
QUICK = Sizes(image_sides=(56, 112), audio_seconds=(1.0, 2.0), video=(2.0, 2, 56), repeats=1, decode_tokens=4,
              streams=2, stream_tokens=16, text_prompt=8, burst_images=4, burst_threads=2, burst_side=112,
              image_tokens=2, rounds=1, mixed=2, mixed_side=112, mixed_tokens=4)  # fmt: skip


def ensure_checkpoint(root: Path = BENCH_ROOT, spec: MingDemoSpec = BENCH_MING) -> Path:
    folder = root / "ming-bench"
    stamp = {"writer": WRITER, "spec": dataclasses.asdict(spec)}
    if not stamp_matches(folder, stamp):
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"writing {folder} (first run only)")
        write_ming_checkpoint(tmp, spec, seed=3, dtype=torch.float32, max_shard_bytes=200_000_000)
        publish(tmp, folder, stamp)
    return folder


# ---------------------------------------------------------------- media, made here


def jpeg(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)  # (H, W, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def wav(seconds: float, seed: int) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    f = 220.0 + 40 * seed
    wave = 0.3 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 2.7 * f * t) * np.exp(-(t % 1))
    buf = io.BytesIO()
    soundfile.write(buf, wave.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def mp4(seconds: float, fps: int, side: int, seed: int) -> bytes:
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    ramp = np.add.outer(np.arange(side), np.arange(side)).astype(np.int64)  # (H, W)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = np.stack([(ramp * (c + 1) + 9 * i + seed) % 256 for c in range(3)], -1)  # (H, W, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def messages(kind: str | None) -> list[dict[str, Any]]:
    content: list[dict[str, str]] = [{"type": "text", "text": "Describe what you perceive, briefly."}]
    return [{"role": "user", "content": content + ([{"type": kind}] if kind else [])}]


def text_prompts(n: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(*PROMPT_IDS, (n, length), generator=g).tolist()


# ---------------------------------------------------------------- engine helpers


class Stamped:
    """An output queue shared by a run's requests: first-token and finish times on our clock."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.tokens: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.final: dict[str, RequestOutput] = {}
        self.done_at = 0.0

    def put(self, out: RequestOutput) -> None:  # the engine thread
        now = time.perf_counter()
        with self.cond:
            self.tokens[out.request_id] = len(out.token_ids)
            if out.token_ids:
                self.first.setdefault(out.request_id, now)
            if out.finished:
                self.final[out.request_id], self.done_at = out, now
            self.cond.notify_all()

    def wait(self, done: Callable[[], bool], timeout: float = 600.0) -> None:
        with self.cond:
            if not self.cond.wait_for(done, timeout):
                raise TimeoutError("the benchmark's requests did not finish")


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def empty_prefix_cache(engine: LLMEngine) -> None:
    with engine.holding_steps():
        engine.blocks.reset_prefix_cache()


def step_to_end(engine: LLMEngine) -> dict[str, RequestOutput]:
    """Step (no loop thread) until nothing is left; the final outputs by request id."""
    final = {}
    while engine.has_unfinished():
        final.update({o.request_id: o for o in engine.step() if o.finished})
    return final


def prepare(
    engine: LLMEngine, proc: MingProcessor, kind: str | None, data: bytes | None
) -> tuple[list[int], MediaState | None, float, float]:
    """Processor then encoders, in this thread: (prompt ids, encoded media, processor s, encoder s)."""
    t0 = time.perf_counter()
    inputs = proc.process(messages(kind), **({f"{kind}s": [data]} if kind else {}))
    t1 = time.perf_counter()
    ids = inputs.input_ids[0].tolist()
    tensors = inputs.media()
    state = engine.encode_media(ids, MediaInputs(tensors)) if tensors else None
    return ids, state, t1 - t0, time.perf_counter() - t1


def ms(seconds: float) -> float:
    return 1000.0 * seconds


# ---------------------------------------------------------------- (a) per medium


def media_cases(sizes: Sizes) -> list[tuple[str, str | None, Callable[[int], bytes] | None]]:
    secs, fps, side = sizes.video
    cases: list[tuple[str, str | None, Callable[[int], bytes] | None]] = [("text only", None, None)]
    cases += [(f"image {s}x{s} JPEG", "image", lambda i, s=s: jpeg(s, i)) for s in sizes.image_sides]
    cases += [(f"audio {a:g} s WAV", "audio", lambda i, a=a: wav(a, i)) for a in sizes.audio_seconds]
    video = f"video {secs:g} s {fps} fps {side}x{side} MP4"
    cases.append((video, "video", lambda i: mp4(secs, fps, side, i)))
    return cases


def media_case(
    engine: LLMEngine, proc: MingProcessor, sizes: Sizes, kind: str | None, data: bytes | None, tag: str
) -> tuple[int, float, float, float, float]:
    """One request alone, stepped to the end: (prompt tokens, processor, encoder, TTFT, median ITL s)."""
    empty_prefix_cache(engine)
    ids, state, proc_s, enc_s = prepare(engine, proc, kind, data)
    rid = engine.add_request(ids, greedy(sizes.decode_tokens), request_id=tag, media=state)
    m = step_to_end(engine)[rid].metrics
    return len(ids), proc_s, enc_s, m.time_to_first_token_s, statistics.median(m.inter_token_latencies_s)


def media_scenario(engine: LLMEngine, proc: MingProcessor, sizes: Sizes) -> list[dict[str, Any]]:
    rows = []
    for name, kind, make in media_cases(sizes):
        log(f"(a) {name}")
        data = make(0) if make else None
        runs = [
            media_case(engine, proc, sizes, kind, data, f"a-{name}-{i}") for i in range(1 + sizes.repeats)
        ]
        tokens, proc_s, enc_s, ttft, itl = (statistics.median(col) for col in zip(*runs[1:], strict=True))
        rows.append(
            {
                "input": name,
                "prompt_tokens": int(tokens),
                "processor_ms": ms(proc_s),
                "encoder_ms": ms(enc_s) if kind else None,
                "ttft_ms": ms(ttft),
                "decode_ms_per_token": ms(itl),
            }
        )
    return rows


# ---------------------------------------------------------------- (b) encoders vs the engine loop


class StepClock:
    """Wraps `engine.step` (the loop calls it through the instance) to time every step: the gaps
    between consecutive steps are the time the loop was held off while requests were in flight."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine, self.spans, self.inner = engine, [], engine.step

    def _timed(self) -> list[RequestOutput]:
        start = time.perf_counter()
        try:
            return self.inner()
        finally:
            self.spans.append((start, time.perf_counter()))

    def __enter__(self) -> StepClock:
        self.engine.step = self._timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.engine.step  # the class's method again

    def gaps(self) -> list[float]:
        return [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(self.spans)] or [0.0]


def arrive(engine: LLMEngine, proc: MingProcessor, sizes: Sizes, images: list[bytes], ours: bool,
           tag: str, sink: Stamped) -> dict[str, float]:  # fmt: skip
    """`burst_threads` clients send the image requests (each its share, one after another); -> arrivals."""
    arrived, errors = {}, []

    def submit(rid: str, data: bytes) -> None:
        ids, state, _, _ = prepare(engine, proc, "image", data)
        engine.add_request(ids, greedy(sizes.image_tokens), request_id=rid, media=state, output_queue=sink)

    def client(k: int) -> None:
        for j in range(k, len(images), sizes.burst_threads):
            rid = f"{tag}-i{j}"
            arrived[rid] = time.perf_counter()
            try:
                if ours:
                    submit(rid, images[j])
                else:  # the loop waits while this request is processed and encoded
                    with engine.holding_steps():
                        submit(rid, images[j])
            except Exception as exc:  # raised below, not lost in the thread
                errors.append(exc)
                return

    threads = [threading.Thread(target=client, args=(k,)) for k in range(sizes.burst_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return arrived


def burst_once(
    engine: LLMEngine, proc: MingProcessor, sizes: Sizes, images: list[bytes], ours: bool, tag: str,
    stream_tokens: int,
) -> dict[str, Any]:  # fmt: skip
    """Text streams decoding on the loop thread while image requests arrive from several threads."""
    empty_prefix_cache(engine)
    sink = Stamped()
    with StepClock(engine) as clock:
        t0 = time.perf_counter()
        texts = [
            engine.add_request(p, greedy(stream_tokens), request_id=f"{tag}-t{i}", output_queue=sink)
            for i, p in enumerate(text_prompts(sizes.streams, sizes.text_prompt, seed=7))
        ]
        sink.wait(lambda: all(sink.tokens.get(r, 0) >= 4 for r in texts))  # the streams are decoding
        arrived = arrive(engine, proc, sizes, images, ours, tag, sink)
        sink.wait(lambda: len(sink.final) == len(texts) + len(images))
    itl = [x for r in texts for x in sink.final[r].metrics.inter_token_latencies_s]
    ttft = [sink.first[r] - arrived[r] for r in arrived]
    return {
        "side": "ours" if ours else "baseline",
        "text_itl_p50_ms": ms(float(np.percentile(itl, 50))),
        "text_itl_p99_ms": ms(float(np.percentile(itl, 99))),
        "text_itl_max_ms": ms(max(itl)),
        "loop_held_s": sum(clock.gaps()),
        "loop_held_max_ms": ms(max(clock.gaps())),
        "image_ttft_median_ms": ms(statistics.median(ttft)),
        "image_ttft_max_ms": ms(max(ttft)),
        "wall_s": sink.done_at - t0,
    }


RATIO_KEYS = ("text_itl_p50_ms", "text_itl_p99_ms", "text_itl_max_ms", "loop_held_s", "loop_held_max_ms",
              "image_ttft_median_ms", "wall_s")  # fmt: skip


def ratio(ours: float, base: float) -> float | None:
    return ours / base if base > 0 else None


def burst_scenario(engine: LLMEngine, proc: MingProcessor, sizes: Sizes) -> dict[str, Any]:
    n, side = sizes.burst_images, sizes.burst_side
    engine.start()
    try:
        log("(b) warm-up")
        for ours in (True, False):
            burst_once(engine, proc, sizes, [jpeg(side, 1000 + i) for i in range(n)], ours, f"bw{ours}", 16)
        runs, ratios = [], []
        for r in range(sizes.rounds):
            pair = {}
            for ours in (True, False):  # fresh images every run: nothing is cached from an earlier one
                log(f"(b) round {r + 1} {'ours' if ours else 'baseline'}")
                images = [jpeg(side, 2000 + 100 * r + 10 * ours + i) for i in range(n)]
                pair[ours] = burst_once(engine, proc, sizes, images, ours, f"b{r}{ours}", sizes.stream_tokens)
                runs.append({"round": r + 1, **pair[ours]})
            ratios.append({"round": r + 1, **{k: ratio(pair[True][k], pair[False][k]) for k in RATIO_KEYS}})
    finally:
        engine.shutdown()
    return {"runs": runs, "ours_over_baseline": ratios}


# ---------------------------------------------------------------- (c) mixed batching


def mixed_scenario(engine: LLMEngine, proc: MingProcessor, sizes: Sizes) -> dict[str, Any]:
    log("(c) encoding the images (untimed)")
    reqs: list[tuple[list[int], MediaState | None]] = []
    for i, text in enumerate(text_prompts(sizes.mixed, sizes.text_prompt, seed=11)):
        ids, state, _, _ = prepare(engine, proc, "image", jpeg(sizes.mixed_side, 3000 + i))
        reqs += [(ids, state), (text, None)]

    def together(batch: list[tuple[list[int], MediaState | None]], tokens: int, tag: str) -> list[list[int]]:
        with engine.holding_steps():
            rids = [engine.add_request(p, greedy(tokens), request_id=f"{tag}{i}", media=m)
                    for i, (p, m) in enumerate(batch)]  # fmt: skip
        final = step_to_end(engine)
        return [final[r].token_ids for r in rids]

    def one_by_one() -> list[list[int]]:
        return [together([r], sizes.mixed_tokens, f"c1-{i}-")[0] for i, r in enumerate(reqs)]

    log("(c) warm-up")
    together(reqs[:2], 4, "cw")
    out: dict[str, Any] = {"requests": len(reqs)}
    tokens = {}
    ways = {"together": lambda: together(reqs, sizes.mixed_tokens, "ca"), "one_by_one": one_by_one}
    for name, way in ways.items():
        log(f"(c) {name}")
        empty_prefix_cache(engine)
        t0 = time.perf_counter()
        tokens[name] = way()
        wall = time.perf_counter() - t0
        n = sum(len(t) for t in tokens[name])
        out[name] = {"generated_tokens": n, "wall_s": wall, "tokens_per_s": n / wall}
    out["speedup"] = out["together"]["tokens_per_s"] / out["one_by_one"]["tokens_per_s"]
    out["same_tokens"] = tokens["together"] == tokens["one_by_one"]
    if not out["same_tokens"]:
        log("!!!!! WARNING (c): batched and one-at-a-time outputs differ")
    return out


# ---------------------------------------------------------------- run and report


def run(sizes: Sizes, root: Path = BENCH_ROOT, spec: MingDemoSpec = BENCH_MING) -> dict[str, Any]:
    folder = ensure_checkpoint(root, spec)
    t0 = time.perf_counter()
    engine = LLMEngine(folder, "cpu", torch.float32, ENGINE)
    proc = MingProcessor.from_pretrained(folder)
    load = {"load_s": time.perf_counter() - t0, "loadavg": {"before": os.getloadavg()[0]}}
    result: dict[str, Any] = {"media": media_scenario(engine, proc, sizes)}
    load["loadavg"]["after_a"] = os.getloadavg()[0]
    result["burst"] = burst_scenario(engine, proc, sizes)
    load["loadavg"]["after_b"] = os.getloadavg()[0]
    result["mixed"] = mixed_scenario(engine, proc, sizes)
    load["loadavg"]["after_c"] = os.getloadavg()[0]
    config = {"max_num_seqs": ENGINE.max_num_seqs, "max_num_batched_tokens": ENGINE.max_num_batched_tokens}
    return {**result, **load, "sizes": dataclasses.asdict(sizes), "spec": dataclasses.asdict(spec),
            "engine": config, "checkpoint": folder.name}  # fmt: skip


def load_note(result: dict[str, Any], machine: dict[str, Any]) -> str:
    """Load average (1 min) before and after each scenario; HIGH when other jobs used the cores too."""
    la, cores = result["loadavg"], machine["cores"] or 1
    seen = ", ".join(f"{k} {v:.2f}" for k, v in la.items())
    high = la["before"] > 0.5 * cores or max(la.values()) > cores + 1  # this run alone reaches ~cores
    note = " -- HIGH: other jobs shared the CPUs, times are noisy" if high else ""
    return f"Load average (1 min): {seen}{note}."


def _cells(values: Sequence[float | None], fmt: str = ".1f") -> str:
    return " | ".join("" if v is None else format(v, fmt) for v in values)


def _ratios(values: Sequence[float | None]) -> str:
    return " | ".join("" if v is None else f"{v:.2f}x" if v >= 0.1 else f"{v:.4f}x" for v in values)


def media_table(rows: list[dict[str, Any]], s: dict[str, Any]) -> list[str]:
    keys = ("processor_ms", "encoder_ms", "ttft_ms", "decode_ms_per_token")
    lines = [
        f"(a) Per medium, the request alone; median of {s['repeats']}, {s['decode_tokens']} greedy tokens:",
        "",
        "| input | prompt tokens | processor ms | encoder ms | TTFT ms (prefill) | decode ms/token |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['input']} | {r['prompt_tokens']} | {_cells([r[k] for k in keys])} |" for r in rows]
    return lines


def burst_table(burst: dict[str, Any], s: dict[str, Any]) -> list[str]:
    lines = [
        f"(b) {s['streams']} text streams x {s['stream_tokens']} tokens decoding while {s['burst_images']} "
        f"{s['burst_side']}x{s['burst_side']} image requests arrive from {s['burst_threads']} threads:",
        "",
        "| round | side | text ITL p50 ms | ITL p99 ms | ITL max ms | loop held s | longest hold ms | "
        "image TTFT median ms | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = {r["round"]: r for r in burst["ours_over_baseline"]}
    fmt = {"loop_held_s": ".3f", "wall_s": ".2f"}
    for r in burst["runs"]:
        row = " | ".join(format(r[k], fmt.get(k, ".1f")) for k in RATIO_KEYS)
        lines.append(f"| {r['round']} | {r['side']} | {row} |")
        if r["side"] == "baseline":
            x = ratios[r["round"]]
            lines.append(f"| {r['round']} | ours / baseline | {_ratios([x[k] for k in RATIO_KEYS])} |")
    return lines


def mixed_table(m: dict[str, Any], s: dict[str, Any]) -> list[str]:
    side, half = s["mixed_side"], m["requests"] // 2
    lines = [
        f"(c) {half} image ({side}x{side}, pre-encoded) + {half} text requests, {s['mixed_tokens']} greedy "
        "tokens each:",
        "",
        "| submitted | generated tokens | wall s | tokens/s | vs one at a time | same tokens |",
        "|---|---|---|---|---|---|",
    ]
    same = "yes" if m["same_tokens"] else "NO"
    for name, label, vs, check in (
        ("together", "all at once", m["speedup"], same),
        ("one_by_one", "one at a time", 1.0, ""),
    ):
        r = m[name]
        lines.append(
            f"| {label} | {r['generated_tokens']} | {r['wall_s']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{vs:.2f}x | {check} |"
        )
    return lines


def markdown_table(result: dict[str, Any], machine: dict[str, Any]) -> str:
    s = result["sizes"]
    head = (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine.get('threads', '?')} torch threads, "
        f"torch {machine['torch']}, fp32, random weights. {load_note(result, machine)}"
    )
    parts = [[head], media_table(result["media"], s), burst_table(result["burst"], s)]
    parts.append(mixed_table(result["mixed"], s))
    return "\n\n".join("\n".join(p) for p in parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny media and counts, one repeat")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout, the rest on stderr")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run(QUICK if args.quick else FULL)
    machine = machine_info(torch.device("cpu"))
    result.update(machine=machine, git=git_state(), total_s=time.perf_counter() - t0)
    report("ming", args.quick, result, markdown_table(result, machine), args.json)
    log(f"total {result['total_s']:.1f} s")


if __name__ == "__main__":
    main()
