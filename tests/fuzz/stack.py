"""The stack a fuzz run hits: one `bailing worker` subprocess per demo model and a `bailing gateway`,
on a real Redis (tests/service/procs.py starts them), plus what "kept serving" means afterwards:
the same worker processes alive with the same ids in the heartbeat registry, the gateway alive, and
an ordinary request to every model answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.api import pb, pb_grpc
from pipelines.protocol import workers_key
from tests.fuzz.fields import Target
from tests.service.procs import Processes, Worker


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    family: str  # the worker's --family


@dataclass(frozen=True)
class Liveness:
    """Who serves: worker ids in the heartbeat registry and each worker's process id, per model."""

    registry: dict[str, frozenset[str]]
    pids: dict[str, int | None]
    exited: tuple[str, ...]  # children (gateway, workers) that are no longer running

    def differences(self, later: Liveness) -> list[str]:
        """What changed from `self` (before a run) to `later` (after it); empty when nothing did."""
        changes = [f"{name} exited" for name in later.exited]
        for model, ids in self.registry.items():
            if later.registry.get(model) != ids:
                changes.append(f"{model}: registry {sorted(ids)} -> {sorted(later.registry.get(model, ()))}")
        for model, pid in self.pids.items():
            if later.pids.get(model) != pid:
                changes.append(f"{model}: worker pid {pid} -> {later.pids.get(model)}")
        return changes


class FuzzStack:
    """Gateway + one worker per model on `redis_url`; `close()` stops them all."""

    def __init__(self, redis_url: str, logs: Path, models: tuple[ModelSpec, ...]) -> None:
        self.models = models
        self.procs = Processes(redis_url, logs)
        self.workers: dict[str, Worker] = {}
        self.address = ""

    def start(self) -> FuzzStack:
        try:
            for spec in self.models:
                self.workers[spec.name] = self.procs.worker(
                    spec.path, spec.name, family=spec.family, timeout=300
                )
            self.address = self.procs.gateway(*(spec.name for spec in self.models))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.procs.close()

    def target(self) -> Target:
        """What each served model does, as its workers announce it (ListModels)."""
        with grpc.insecure_channel(self.address) as channel:
            infos = pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=30).models
        return Target(
            served=tuple(m.name for m in infos),
            media=tuple(m.name for m in infos if "image" in m.modalities and "audio" in m.modalities),
            image=tuple(m.name for m in infos if "image" in m.outputs),
            speech=tuple(m.name for m in infos if "audio" in m.outputs),
            voices=tuple(sorted({v for m in infos for v in m.voices})),
        )

    def liveness(self) -> Liveness:
        redis = self.procs.redis
        registry = {
            spec.name: frozenset(m.decode() for m in redis.zrange(workers_key(spec.name), 0, -1))
            for spec in self.models
        }
        pids = {name: worker.child.pid for name, worker in self.workers.items()}
        exited = tuple(child.name for child in self.procs.children if child.exit_code() is not None)
        return Liveness(registry, pids, exited)

    def ordinary_requests(self) -> dict[str, str]:
        """A plain two-token request to every model: model -> "" when answered, else the error."""
        failures = {}
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.InferenceStub(channel)
            for spec in self.models:
                request = pb.GenerateRequest(
                    model=spec.name, prompt="Hello", sampling=pb.SamplingParams(max_tokens=2, temperature=0.0)
                )
                try:
                    reply = stub.Generate(request, timeout=120)
                    failures[spec.name] = "" if reply.usage.completion_tokens > 0 else "no tokens"
                except grpc.RpcError as err:
                    failures[spec.name] = f"{err.code().name}: {err.details()}"
        return failures
