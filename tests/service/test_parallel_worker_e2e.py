"""A worker group end to end (real Redis, gateway and worker processes, gRPC): `bailing worker
--tensor-parallel 2` answers as a one-rank worker does; when its rank 1 is SIGKILLed mid-stream and
mid-batch, the whole group ends (no process left), the stream ends UNAVAILABLE, and a restarted group
finishes the batch with every item exactly once."""

from __future__ import annotations

import signal
import sys
import time
import uuid

import grpc
import psutil
import pytest

from bailing.child_process import Child
from gateway.api import pb, pb_grpc
from pipelines.protocol import WORKER_DEAD_AFTER_S, workers_key
from tests.service.procs import Processes, free_port
from tests.service.test_batch_e2e import VISIBILITY_S, check_exactly_once, jsonl, results, wait_batch

pytestmark = pytest.mark.slow
GROUP_FAILED_EXIT = 75  # workers.runtime.GROUP_FAILED_EXIT


@pytest.fixture(scope="module")
def procs(redis_url, tmp_path_factory):
    running = Processes(redis_url, tmp_path_factory.mktemp("group-logs"))
    yield running
    running.close()


def request(model: str, max_tokens: int, **sampling) -> pb.GenerateRequest:
    params = pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True, **sampling)
    return pb.GenerateRequest(
        model=model, prompt="The quick brown fox", sampling=params, request_id=uuid.uuid4().hex
    )


def followers_of(pid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if "engine.parallel.follower_main" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # a short-lived helper that already ended (a zombie until reaped)
            continue
    return found


def test_a_two_rank_worker_answers_as_one_rank_and_a_dead_rank_loses_nothing(procs, demo_ling):
    procs.worker(demo_ling, "ling-tp1")
    group = procs.worker(
        demo_ling, "ling-tp2", "--tensor-parallel", "2", "--visibility-timeout", VISIBILITY_S
    )
    (rank1,) = followers_of(group.child.pid)
    address = procs.gateway("ling-tp1", "ling-tp2")
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 11, "n": 3}):
            one = stub.Generate(request("ling-tp1", 24, **sampling), timeout=120)
            two = stub.Generate(request("ling-tp2", 24, **sampling), timeout=120)
            assert [c.text for c in two.choices] == [c.text for c in one.choices] and one.choices[0].text

        jobs = pb_grpc.JobsStub(channel)
        batch = jobs.CreateBatch(pb.CreateBatchRequest(model="ling-tp2", jsonl=jsonl(120)), timeout=120)
        stream = stub.GenerateStream(request("ling-tp2", 2000, temperature=0), timeout=180)
        next(stream)  # the stream is under way
        while jobs.GetBatch(pb.GetBatchRequest(id=batch.id)).counts.completed < 10:
            time.sleep(0.05)
        rank1.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert time.monotonic() - t0 < WORKER_DEAD_AFTER_S + 5
        group.child.proc.wait(30)
        assert group.child.exit_code() == GROUP_FAILED_EXIT  # rank 0 ended itself, nothing acked
        assert not group.child.group_alive()  # no rank left behind

    procs.worker(demo_ling, "ling-tp2", "--tensor-parallel", "2", "--visibility-timeout", VISIBILITY_S)
    with grpc.insecure_channel(address) as channel:
        jobs = pb_grpc.JobsStub(channel)
        done = wait_batch(jobs, batch.id, timeout=240)
        assert done.status == pb.COMPLETED and (done.counts.completed, done.counts.failed) == (120, 0)
        check_exactly_once(results(jobs, batch.id), 120)


def _start(procs: Processes, name: str, argv: list[str]) -> Child:
    child = Child(name, argv, procs.logs / f"{name}-{uuid.uuid4().hex[:6]}.log")
    child.start(procs._env())
    procs.children.append(child)
    return child


def _wait_registered(
    procs: Processes, name: str, worker_id: str, child: Child, timeout: float = 120.0
) -> None:
    until = time.monotonic() + timeout
    while procs.redis.zscore(workers_key(name), worker_id) is None:
        assert child.exit_code() is None and time.monotonic() < until, child.describe()
        time.sleep(0.05)


def _worker_argv(model_dir, name: str, worker_id: str, redis_url: str) -> list[str]:
    return [
        "-m", "bailing.cli", "worker", "--family", "ling", "--model", str(model_dir), "--name", name,
        "--worker-id", worker_id, "--redis-url", redis_url,
    ]  # fmt: skip


@pytest.mark.parametrize("launch", ["two-nodes", "torchrun"])
def test_a_group_over_two_nodes_or_under_torchrun_answers_as_one_rank(procs, demo_ling, launch):
    """Two `bailing worker` processes as node 0 and node 1 of one group (rendezvous over TCP, as on two
    machines), or torchrun starting one process per rank: either way the group answers as one rank,
    and ending rank 0 ends every process of it."""
    name, worker_id, port = f"ling-{launch}", f"ling-{launch}@test", free_port()
    base = [sys.executable, *_worker_argv(demo_ling, name, worker_id, procs.redis_url)]
    if launch == "two-nodes":
        group = ["--tensor-parallel", "2", "--nnodes", "2", "--master-port", str(port)]
        node1 = _start(procs, f"{name}-node1", [*base, *group, "--node-rank", "1"])
        rank0 = _start(procs, f"{name}-node0", [*base, *group, "--node-rank", "0"])
        others = [node1]
    else:
        run = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(port),
        ]
        rank0 = _start(procs, name, [*run, *_worker_argv(demo_ling, name, worker_id, procs.redis_url)])
        others = []
    _wait_registered(procs, name, worker_id, rank0)
    procs.worker(demo_ling, "ling-one")
    address = procs.gateway(name, "ling-one")
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        want = stub.Generate(request("ling-one", 24, temperature=0), timeout=120).choices[0].text
        assert stub.Generate(request(name, 24, temperature=0), timeout=120).choices[0].text == want
    rank0.signal_group(signal.SIGTERM)
    for child in [rank0, *others]:
        until = time.monotonic() + 60
        while child.group_alive() and time.monotonic() < until:
            time.sleep(0.1)
        assert not child.group_alive(), child.describe()
