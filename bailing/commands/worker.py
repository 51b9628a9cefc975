"""`bailing worker`: serve one model family from its Redis queue (Celery, threads pool, one engine).

Flow: flags + BAILING_REDIS_URL -> `WorkerConfig` -> `workers.app.run_worker`, which loads the
engine first (a bad checkpoint exits 2 with a one-line error) and then consumes jobs until SIGTERM
(warm shutdown: jobs in flight get --shutdown-grace seconds to finish, then the worker leaves the
registry).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="serve one model family from its Redis queue")
    p.add_argument("--family", required=True, help="model family (ling, ring, llada2, ming)")
    p.add_argument("--model", required=True, metavar="DIR", help="Hugging Face checkpoint folder")
    p.add_argument("--name", default=None, help="served model name (default: the family)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="compute dtype (default: bfloat16 on a GPU and on a CPU with bf16 arithmetic, else float32; "
        "$BAILING_CPU_DTYPE presets the CPU choice)",
    )
    p.add_argument(
        "--quantize",
        default=None,
        choices=["int8"],
        help="hold the weights quantized: int8 = weight-only int8 with per-row scales (CPU decode reads "
        "a quarter of fp32's bytes); one rank only",
    )
    p.add_argument(
        "--compile-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run decode steps of a few requests as one compiled graph on CPU, compiled in the background "
        "at start (default: on unless $BAILING_COMPILE=0)",
    )
    p.add_argument("--max-num-seqs", type=int, default=64, help="requests running at once (default 64)")
    p.add_argument(
        "--max-batch-inflight",
        type=int,
        default=None,
        help="queued batch items running at once (default: max(1, max-num-seqs // 2))",
    )
    p.add_argument(
        "--batch-prefill-tokens",
        type=int,
        default=256,
        help="prompt tokens per engine step for all batch items together, so interactive requests never "
        "wait behind a long batch prefill step (default 256)",
    )
    media = p.add_argument_group("media limits (multimodal families, e.g. ming; default: the processor's)")
    media.add_argument("--max-image-pixels", type=int, default=None, help="decoded pixels per image (1e8)")
    media.add_argument("--max-audio-seconds", type=float, default=None, help="seconds per audio clip (300)")
    media.add_argument("--max-video-seconds", type=float, default=None, help="seconds per video (600)")
    media.add_argument("--max-video-frames", type=int, default=None, help="frames sampled per video (128)")
    images = p.add_argument_group("image generation (checkpoints with generation heads, e.g. ming)")
    images.add_argument("--max-image-steps", type=int, default=200, help="denoising steps per request (200)")
    images.add_argument("--max-images-per-request", type=int, default=4, help="images per request (4)")
    images.add_argument(
        "--image-stage",
        default="local",
        choices=["local", "remote"],
        help="where image requests denoise: in this worker (local, default), or handed to the model's "
        "--role image-stage workers through Redis (remote: this worker then loads no DiT / VAE)",
    )
    speech = p.add_argument_group("speech output (checkpoints with a talker, e.g. ming)")
    speech.add_argument(
        "--max-speech-text-chars", type=int, default=2000, help="characters of text per speech job (2000)"
    )
    speech.add_argument(
        "--max-speech-seconds", type=float, default=120.0, help="seconds of audio out per request (120)"
    )
    speech.add_argument(
        "--min-speaker-clip-seconds", type=float, default=1.0, help="shortest speaker clip to clone (1)"
    )
    speech.add_argument(
        "--max-speaker-clip-seconds", type=float, default=30.0, help="longest speaker clip to clone (30)"
    )
    speech.add_argument(
        "--max-speaker-clip-bytes", type=int, default=16 * 2**20, help="bytes per speaker clip (16 MiB)"
    )
    p.add_argument(
        "--role",
        default="model",
        choices=["model", "image-stage"],
        help="model (default): serve the model's queue; image-stage: a diffusion stage of its own for "
        "the model's workers started with --image-stage remote (loads the DiT / VAE only)",
    )
    p.add_argument("--max-model-len", type=int, default=None, help="context length cap (default: model's)")
    p.add_argument("--kv-cache-bytes", type=int, default=None, help="KV cache size (default: engine's)")
    p.add_argument(
        "--default-max-tokens", type=int, default=256, help="max_tokens when a request sets none (256)"
    )
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus port; 0 = off (default)")
    p.add_argument(
        "--redis-url", default=None, help=f"broker (default: $BAILING_REDIS_URL or {DEFAULT_REDIS_URL})"
    )
    p.add_argument(
        "--visibility-timeout", type=int, default=3600, help="seconds before an unacked job is redelivered"
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=240.0,
        help="on SIGTERM, running requests get this long to finish, then end UNAVAILABLE (240)",
    )
    group = p.add_argument_group(
        "one model over several devices / machines (torchrun's RANK, WORLD_SIZE, LOCAL_RANK, "
        "MASTER_ADDR, MASTER_PORT override these)"
    )
    group.add_argument(
        "--tensor-parallel", type=int, default=1, metavar="N", help="ranks the model is split over (1)"
    )
    group.add_argument(
        "--expert-parallel", action="store_true", help="split MoE experts by expert instead of by width"
    )
    group.add_argument("--nnodes", type=int, default=1, help="machines the ranks span (1)")
    group.add_argument(
        "--node-rank", type=int, default=0, help="this machine's index; > 0 runs follower ranks only (0)"
    )
    group.add_argument("--master-addr", default="127.0.0.1", help="node 0's address (127.0.0.1)")
    group.add_argument("--master-port", type=int, default=None, help="rendezvous port on node 0 (a free one)")
    p.add_argument("--worker-id", default=None, help="worker id (default: NAME@HOST:PID)")
    p.add_argument(
        "--logits-processor",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="add a logits processor to every request: FACTORY(tokenizer) returns one (repeatable)",
    )
    p.add_argument(
        "--loglevel", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    p.set_defaults(func=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    from bailing.settings import read_environment
    from workers.app import run_worker
    from workers.config import WorkerConfig

    config = WorkerConfig(
        redis_url=args.redis_url or read_environment().redis_url or DEFAULT_REDIS_URL,
        family=args.family,
        model_dir=args.model,
        name=args.name or "",
        device=args.device,
        dtype=args.dtype,
        compile_decode=args.compile_decode,
        quantization=args.quantize,
        max_num_seqs=args.max_num_seqs,
        max_batch_inflight=args.max_batch_inflight,
        batch_prefill_tokens=args.batch_prefill_tokens,
        kv_cache_bytes=args.kv_cache_bytes,
        max_model_len=args.max_model_len,
        default_max_tokens=args.default_max_tokens,
        metrics_port=args.metrics_port,
        visibility_timeout_s=args.visibility_timeout,
        shutdown_grace_s=args.shutdown_grace,
        worker_id=args.worker_id or "",
        logits_processors=tuple(args.logits_processor),
        max_image_pixels=args.max_image_pixels,
        max_audio_seconds=args.max_audio_seconds,
        max_video_seconds=args.max_video_seconds,
        max_video_frames=args.max_video_frames,
        max_image_steps=args.max_image_steps,
        max_images_per_request=args.max_images_per_request,
        role=args.role,
        image_stage=args.image_stage,
        max_speech_text_chars=args.max_speech_text_chars,
        max_speech_seconds=args.max_speech_seconds,
        min_speaker_clip_seconds=args.min_speaker_clip_seconds,
        max_speaker_clip_seconds=args.max_speaker_clip_seconds,
        max_speaker_clip_bytes=args.max_speaker_clip_bytes,
        tensor_parallel_size=args.tensor_parallel,
        expert_parallel=args.expert_parallel,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
    )
    logging.basicConfig(level=args.loglevel, format=_LOG_FORMAT)
    code = run_worker(config, args.loglevel)
    # The worker is done (engine stopped, registry left). Exit now rather than join leftover threads:
    # after Celery's consumer dies of a broker error, a pool thread can block interpreter exit for good.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
