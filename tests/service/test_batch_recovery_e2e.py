"""Recovery in seconds: with the default visibility timeout (3600 s), a worker SIGKILLed in the middle
of a 500-item batch has the items it held put back by the live worker's sweeper, which runs them at
once. Real Redis, `bailing gateway` and two `bailing worker` subprocesses, real gRPC."""

from __future__ import annotations

import base64
import json
import time

import grpc
import pytest

from gateway.api import pb, pb_grpc
from pipelines.batches import batch_key
from tests.service.batch_calls import check_exactly_once, jsonl, results, wait_batch
from tests.service.procs import Processes
from workers.batch_recovery import held_key

pytestmark = pytest.mark.slow
ITEMS = 500
RESUME_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def procs(redis_url, tmp_path_factory):
    running = Processes(redis_url, tmp_path_factory.mktemp("recovery-logs"))
    yield running
    running.close()


def held_indexes(r, worker_id: str) -> set[int]:
    """The batch item indexes `worker_id` has taken and not acked (read from kombu's unacked hash)."""
    out = set()
    for tag in r.hkeys(held_key(worker_id)):
        entry = r.hget("unacked", tag)
        if entry is not None:
            message = json.loads(entry)[0]
            args = json.loads(base64.b64decode(message["body"]))[0]
            out.add(args[0]["index"])
    return out


def test_a_killed_workers_items_resume_on_a_live_worker_within_seconds(procs, demo_ling):
    doomed = procs.worker(demo_ling, "ling-rc")  # default --visibility-timeout: 3600 s
    procs.worker(demo_ling, "ling-rc")
    address = procs.gateway("ling-rc")
    r = procs.redis
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.JobsStub(channel)
        batch = stub.CreateBatch(pb.CreateBatchRequest(model="ling-rc", jsonl=jsonl(ITEMS)), timeout=120)
        done_key = batch_key(batch.id) + ":results"
        while r.hlen(done_key) < 50:
            time.sleep(0.05)
        held: set[int] = set()
        while not held:  # kill it while it holds items (it always does while the batch runs)
            held = held_indexes(r, doomed.worker_id)
        doomed.kill()
        killed_at = time.monotonic()
        pending = {i for i in held if not r.hexists(done_key, i)}
        while pending and time.monotonic() - killed_at < 120:
            pending = {i for i in pending if not r.hexists(done_key, i)}
            time.sleep(0.05)
        resumed_in = time.monotonic() - killed_at
        print(f"held by the killed worker: {sorted(held)}; all recorded {resumed_in:.2f} s after the kill")
        assert not pending, f"items {sorted(pending)} of the killed worker never ran"
        assert resumed_in < RESUME_WITHIN_S, f"the killed worker's items took {resumed_in:.1f} s"
        done = wait_batch(stub, batch.id, timeout=300)
        assert done.status == pb.COMPLETED and (done.counts.completed, done.counts.failed) == (ITEMS, 0)
        check_exactly_once(results(stub, batch.id), ITEMS)
