"""Batch jobs through the whole service: real Redis, `bailing gateway` and `bailing worker`
subprocesses, real gRPC; a 1,000-item batch, a worker SIGKILLed mid-batch, a gateway restarted
mid-batch, cancel and expiry. Every check is on counts and content: each item exactly once."""

from __future__ import annotations

import time

import grpc
import pytest

from gateway.api import pb, pb_grpc
from tests.service.batch_calls import check_exactly_once, jsonl, results, wait_batch
from tests.service.procs import Processes

pytestmark = pytest.mark.slow
VISIBILITY_S = "6"  # a killed worker's unacked items come back after this long


@pytest.fixture(scope="module")
def procs(redis_url, tmp_path_factory):
    running = Processes(redis_url, tmp_path_factory.mktemp("batch-logs"))
    yield running
    running.close()


def test_a_thousand_items_complete_exactly_once_in_input_order(procs, demo_ling):
    procs.worker(demo_ling, "ling-b1")
    address = procs.gateway("ling-b1")
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.JobsStub(channel)
        batch = stub.CreateBatch(pb.CreateBatchRequest(model="ling-b1", jsonl=jsonl(1000)), timeout=120)
        assert batch.counts.total == 1000
        done = wait_batch(stub, batch.id)
        assert done.status == pb.COMPLETED and done.counts.completed == 1000 and done.counts.failed == 0
        assert done.usage.completion_tokens == 2000
        check_exactly_once(results(stub, batch.id), 1000)
        inference = pb_grpc.InferenceStub(channel)  # the interactive path still answers
        out = inference.Generate(
            pb.GenerateRequest(model="ling-b1", prompt="hi", sampling=pb.SamplingParams(max_tokens=2)),
            timeout=60,
        )
        assert out.usage.completion_tokens <= 2


def test_sigkilled_worker_and_restarted_gateway_lose_nothing(procs, demo_ling):
    first = procs.worker(demo_ling, "ling-b2", "--visibility-timeout", VISIBILITY_S)
    address = procs.gateway("ling-b2")
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.JobsStub(channel)
        batch = stub.CreateBatch(pb.CreateBatchRequest(model="ling-b2", jsonl=jsonl(300)), timeout=120)
        while stub.GetBatch(pb.GetBatchRequest(id=batch.id)).counts.completed < 30:
            time.sleep(0.1)
        first.kill()  # SIGKILL: its claimed and prefetched items were never acknowledged
    procs.worker(demo_ling, "ling-b2", "--visibility-timeout", VISIBILITY_S)
    second_address = procs.gateway("ling-b2")  # a new gateway: the batch lives in Redis only
    with grpc.insecure_channel(second_address) as channel:
        stub = pb_grpc.JobsStub(channel)
        done = wait_batch(stub, batch.id, timeout=120)
        assert done.status == pb.COMPLETED and (done.counts.completed, done.counts.failed) == (300, 0)
        check_exactly_once(results(stub, batch.id), 300)


def test_cancel_stops_new_items_and_keeps_partial_results(procs, demo_ling):
    procs.worker(demo_ling, "ling-b3")
    address = procs.gateway("ling-b3")
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.JobsStub(channel)
        batch = stub.CreateBatch(
            pb.CreateBatchRequest(model="ling-b3", jsonl=jsonl(400, max_tokens=2)), timeout=120
        )
        while stub.GetBatch(pb.GetBatchRequest(id=batch.id)).counts.completed < 10:
            time.sleep(0.05)
        stub.CancelBatch(pb.CancelBatchRequest(id=batch.id), timeout=30)
        done = wait_batch(stub, batch.id, timeout=120)
        assert done.status == pb.CANCELLED
        assert done.counts.completed + done.counts.failed == 400 and done.counts.completed < 400
        out = results(stub, batch.id)
        assert [r.index for r in out] == list(range(400))  # every item has exactly one outcome
        cancelled = [r for r in out if r.WhichOneof("outcome") == "error"]
        assert cancelled and {r.error.code for r in cancelled} == {"CANCELLED"}
        assert len(out) - len(cancelled) == done.counts.completed >= 10


def test_transient_failures_are_retried_and_a_persistent_one_fails_alone(procs, demo_ling):
    """INTERNAL (here: a logits processor that raises) is retried with a new attempt: the first two
    requests of the flaky worker fail once and then succeed; on the broken worker the item fails
    with INTERNAL after MAX_ITEM_RETRIES retries while the other models' items are unaffected."""
    flaky = procs.worker(
        demo_ling, "ling-b5", "--logits-processor", "tests.service.flaky_processor:make_flaky"
    )
    procs.worker(demo_ling, "ling-b6", "--logits-processor", "tests.service.flaky_processor:make_broken")
    address = procs.gateway("ling-b5", "ling-b6")
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.JobsStub(channel)
        ok = stub.CreateBatch(pb.CreateBatchRequest(model="ling-b5", jsonl=jsonl(4)), timeout=60)
        broken = stub.CreateBatch(pb.CreateBatchRequest(model="ling-b6", jsonl=jsonl(1)), timeout=60)
        done = wait_batch(stub, ok.id, timeout=120)
        assert done.status == pb.COMPLETED and (done.counts.completed, done.counts.failed) == (4, 0)
        check_exactly_once(results(stub, ok.id), 4)
        log = flaky.child.log_path.read_text()
        assert log.count("; retry 1") == 2 and "; retry 2" not in log
        failed = wait_batch(stub, broken.id, timeout=120)  # retried after 1, 2 and 4 s
        assert failed.status == pb.COMPLETED and (failed.counts.completed, failed.counts.failed) == (0, 1)
        (only,) = results(stub, broken.id)
        assert only.error.code == "INTERNAL" and "internal error" in only.error.message


def test_expiry_ends_unfinished_items(procs, demo_ling):
    address = procs.gateway("ling-b4")  # no worker: nothing runs, the window passes
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.JobsStub(channel)
        batch = stub.CreateBatch(
            pb.CreateBatchRequest(model="ling-b4", jsonl=jsonl(5), completion_window_s=0.5), timeout=60
        )
        time.sleep(1.0)
        done = stub.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=30)
        assert done.status == pb.EXPIRED and done.counts.failed == 5
        assert {r.error.code for r in results(stub, batch.id)} == {"DEADLINE_EXCEEDED"}
