"""A worker group end to end (real Redis, gateway and worker processes, gRPC): `bailing worker
--tensor-parallel 2` answers as a one-rank worker does; when its rank 1 is SIGKILLed mid-stream and
mid-batch, the whole group ends (no process left), the stream ends UNAVAILABLE, and a restarted group
finishes the batch with every item exactly once."""

from __future__ import annotations

import signal
import time
import uuid

import grpc
import psutil
import pytest

from gateway.api import pb, pb_grpc
from pipelines.protocol import WORKER_DEAD_AFTER_S
from tests.service.procs import Processes
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
