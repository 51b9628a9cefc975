"""`bailing up`: run the whole service locally (embedded Valkey, gateway, one worker per demo model).

Flow: flags + environment (BAILING_REDIS_URL, BAILING_API_TOKEN) -> `bailing.stack.Stack` -> start,
print how to call it, wait. Ctrl-C or SIGTERM stops everything (a second one skips the grace period).
Exit codes: 0 stopped on request, 1 the stack failed to start or a child died.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
DEFAULT_ADDRESS = "127.0.0.1:50051"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _banner(
    address: str, models: list[str], token: bool, samples: str = "samples", http: str | None = None
) -> str:
    """What to try once the stack is up: a `bailing chat` line per model, media in and out for the
    Ming models, `models`, raw grpcurl, and curl against the OpenAI-compatible HTTP API (`http`)."""
    models = models or ["ling"]
    program = sys.argv[0] if sys.argv and os.path.basename(sys.argv[0]) == "bailing" else "bailing"
    where = "" if address == DEFAULT_ADDRESS else f" --address {address}"
    auth = ' -H "authorization: Bearer $BAILING_API_TOKEN"' if token else ""
    payload = f'{{"model": "{models[0]}", "prompt": "hello", "sampling": {{"max_tokens": 16}}}}'
    return "\n".join(
        [
            f"Bailing Serve is up on {address} (models: {', '.join(models)}). Try:",
            *(f'  {program} chat --model {model}{where} "hello"' for model in models),
            *(
                [
                    f'  {program} chat --model ming{where} --image {samples}/photo.jpg "what is this?"',
                    f"  {program} transcribe --model ming{where} {samples}/speech.wav",
                    f"  {program} image --model ming{where} --width 512 --height 512 --steps 8 -o fox.png"
                    ' "a red fox"',
                ]
                if "ming" in models
                else []
            ),
            *(
                [
                    f'  {program} speak --model ming2{where} -o hello.wav "Hello there."',
                    f'  {program} chat --model ming2{where} --speak answer.wav "Tell me a story."',
                ]
                if "ming2" in models
                else []
            ),
            f"  {program} models{where}",
            f"  grpcurl -plaintext{auth} -d '{payload}' {address} bailing.v1.Inference/Generate",
            *(_http_examples(http, models[0], token, samples if "ming" in models else None) if http else []),
            "Ctrl-C stops everything.",
        ]
    )


def _http_examples(http: str, model: str, token: bool, samples: str | None) -> list[str]:
    """curl lines for the OpenAI-compatible API (a transcription upload when Ming serves, `samples`),
    and the same chat through the official `openai` client."""
    auth = ' -H "authorization: Bearer $BAILING_API_TOKEN"' if token else ""
    chat = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "hello"}}], "max_tokens": 16}}'
    client = (
        f"import os, openai; c = openai.OpenAI(base_url='http://{http}/v1', "
        "api_key=os.environ.get('BAILING_API_TOKEN', 'unused')); "
        f"print(c.chat.completions.create(model='{model}', max_tokens=16, "
        "messages=[{'role': 'user', 'content': 'hello'}]).choices[0].message.content)"
    )
    upload = f"file=@{samples}/speech.wav"
    return [
        f"OpenAI-compatible HTTP API on http://{http}/v1 (base_url for the openai client):",
        f"  curl -s http://{http}/v1/models{auth}",
        f"  curl -s http://{http}/v1/chat/completions -H 'content-type: application/json'{auth} -d '{chat}'",
        *(
            [f"  curl -s http://{http}/v1/audio/transcriptions{auth} -F model=ming -F {upload}"]
            if samples
            else []
        ),
        f'  {_python()} -c "{client}"',
    ]


def _python() -> str:
    """This interpreter (it has the openai package), as a path relative to here when it is below."""
    relative = os.path.relpath(sys.executable)
    return sys.executable if relative.startswith("..") else relative


def _progress(message: str) -> None:
    print(f"[up] {message}", file=sys.stderr, flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    from bailing.settings import read_environment
    from bailing.stack import Stack, StackError
    from bailing.supervise import RestartPolicy

    env = read_environment()
    stack = Stack(
        port=args.port, host=args.host, dir=args.dir, redis_url=args.redis_url or env.redis_url,
        metrics_port_base=args.metrics_port_base, device=args.device, token=env.api_token,
        ready_timeout_s=args.ready_timeout, grace_s=args.grace, log=_progress,
        models=[m for m in args.models.split(",") if m] if args.models else None,
        tensor_parallel=args.tensor_parallel, expert_parallel=args.expert_parallel,
        restart_policy=RestartPolicy(max_streak=args.crash_loop_after), replicas=args.replicas,
        http_port=None if args.http_port < 0 else args.http_port, kv_cache_bytes=args.kv_cache_bytes,
        compile_decode=args.compile_decode,
    )  # fmt: skip
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    # Explicit for SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # keeps it ignored, so `make up &` followed by kill -INT would otherwise do nothing.
    signal.signal(signal.SIGINT, _raise_interrupt)
    code = EXIT_OK
    try:
        stack.start()
        samples = os.path.relpath(stack.dir / "samples")
        samples = str(stack.dir / "samples") if samples.startswith("..") else samples
        http = stack.http_address if stack.http_port is not None else None
        print(_banner(stack.address, list(stack.models), bool(env.api_token), samples, http), flush=True)
        dead = stack.supervise()
        assert dead is not None  # only stop() ends supervision without a crash loop
        times = stack.policy.records[dead.name].streak
        print(f"error: {dead.name} keeps dying ({times} times in a row): {dead.describe()}", file=sys.stderr)
        code = EXIT_FAILED
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        _progress("stopping (Ctrl-C again to kill at once)")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stack.kill_now())
        stack.stop()
        if stack.restarts():
            _progress("restarts: " + ", ".join(f"{name} {n}" for name, n in stack.restarts().items()))
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _progress("stopped")
    return code


def add_parsers(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="run Valkey, the gateway and a worker per demo model locally until Ctrl-C")
    up.add_argument("--port", type=int, default=50051, help="gateway port (default 50051; 0 = any free port)")
    up.add_argument(
        "--http-port", type=int, default=8000, metavar="P",
        help="the OpenAI-compatible HTTP API's port (default 8000; 0 = any free port; -1 = off)",
    )  # fmt: skip
    up.add_argument("--host", default="127.0.0.1", help="gateway host to bind (default 127.0.0.1)")
    up.add_argument(
        "--dir", default=".bailing/demo", help="demo checkpoints, logs/ and valkey/ (default .bailing/demo)"
    )
    up.add_argument(
        "--metrics-port-base", type=int, default=0, metavar="P",
        help="Prometheus ports: gateway P, workers P+1, P+2, ... (default 0: off)",
    )  # fmt: skip
    up.add_argument("--device", default="cpu", help="torch device of the workers (default cpu)")
    up.add_argument(
        "--models",
        default=None,
        metavar="A,B",
        help="serve only these demo models (default: ling,ring,llada2,ming,ming2)",
    )
    up.add_argument(
        "--tensor-parallel", type=int, default=1, metavar="N",
        help="split each worker's model over N ranks (local processes; default 1)",
    )  # fmt: skip
    up.add_argument(
        "--expert-parallel", action="store_true", help="with --tensor-parallel: split experts by expert"
    )
    up.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis instead of an embedded Valkey (default: $BAILING_REDIS_URL)",
    )
    up.add_argument(
        "--ready-timeout", type=float, default=300.0, metavar="S", help="startup limit (default 300)"
    )
    up.add_argument(
        "--grace", type=float, default=15.0, metavar="S", help="SIGTERM-to-SIGKILL grace on stop (default 15)"
    )
    up.add_argument(
        "--kv-cache-bytes", type=int, default=None, metavar="B",
        help="each worker's KV cache (default: on CPU what 8 full-length sequences need, at most 1 GiB)",
    )  # fmt: skip
    up.add_argument(
        "--compile-decode", action="store_true",
        help="compile the workers' decode graphs (engine.decode_graph; off for the few-MB demo models: "
        "it costs tens of CPU seconds and 100-250 MiB per worker and gains them nothing)",
    )  # fmt: skip
    up.add_argument("--replicas", type=int, default=1, metavar="N", help="workers per model (default 1)")
    up.add_argument(
        "--crash-loop-after", type=int, default=6, metavar="N",
        help="a child that dies is restarted with backoff (1, 2, 4 ... 30 s); its N-th death in a row, "
        "each within 60 s of its start, stops bailing up with exit 1 (default 6; 1 = never restart)",
    )  # fmt: skip
    up.set_defaults(func=_cmd_up)
