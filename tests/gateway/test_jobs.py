"""The Jobs service on a real gateway and a real Redis, with no worker: the Celery messages are read
off the batch queue list, and workers are simulated by claiming items and writing results through
the real BatchStore.
"""

from __future__ import annotations

import base64
import json
import time

import grpc
import pytest
import redis
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.api import pb, pb_grpc
from gateway.config import GatewayConfig
from pipelines.batches import TASK_BATCH_ITEM, BatchItemJob, BatchStore, ItemResult, batch_queue_name
from pipelines.protocol import Usage
from tests.gateway.conftest import GatewayThread

LIVE = "bailing:test:live-workers"  # heartbeat ZSET the claims check

S = pb.BatchStatus


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.fixture()
def store(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    yield BatchStore(client)
    client.close()


@pytest.fixture()
def jobs(start_gateway, channel_to, model):
    gw = start_gateway((model,))
    return pb_grpc.JobsStub(channel_to(gw.address))


def item(custom_id: str, text: str = "hello", **kw) -> pb.BatchItem:
    return pb.BatchItem(custom_id=custom_id, request=pb.GenerateRequest(prompt=text, **kw))


def jsonl(*lines) -> bytes:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()


def queued(store: BatchStore, model: str) -> list[tuple[dict, dict]]:
    """(headers, args[0]) of every Celery message on the model's batch queue, in send order."""
    out = []
    for raw in reversed(store.redis.lrange(batch_queue_name(model), 0, -1)):  # kombu LPUSHes
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"], args[0]))
    return out


def results(jobs, batch_id: str) -> list[pb.BatchResult]:
    return list(jobs.GetBatchResults(pb.GetBatchResultsRequest(id=batch_id), timeout=10))


def answer(index: int, custom_id: str, text: str = "hi") -> ItemResult:
    response = {
        "request_id": f"x-{index}",
        "text": text,
        "finishReason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
        "not_a_field": 1,  # ignored
    }
    return ItemResult(index, custom_id, response=response)


# ---- create -------------------------------------------------------------------------------------
def test_create_inline_batch_queues_one_task_per_item(jobs, store, model):
    req = pb.CreateBatchRequest(
        model=model,
        items=[item("a"), item("b", priority=5), item("c", sampling=pb.SamplingParams(max_tokens=7))],
        metadata={"owner": "test"},
        completion_window_s=3600,
    )
    batch = jobs.CreateBatch(req, timeout=10)
    assert batch.id.startswith("batch_") and batch.model == model
    assert batch.status == S.QUEUED and batch.metadata == {"owner": "test"}
    assert (batch.counts.total, batch.counts.completed, batch.counts.failed) == (3, 0, 0)
    assert batch.created_at > 0 and batch.expires_at == pytest.approx(batch.created_at + 3600)
    messages = queued(store, model)
    assert len(messages) == 3
    for i, (headers, payload) in enumerate(messages):
        assert headers["task"] == TASK_BATCH_ITEM and headers["id"] == f"{batch.id}:{i}"
        job = BatchItemJob.from_dict(payload)
        assert (job.batch_id, job.index, job.custom_id) == (batch.id, i, "abc"[i])
        assert job.job.request_id == f"{batch.id}-{i}" and job.job.model == model
        assert job.job.prompt == "hello" and json.loads(json.dumps(job.to_dict())) == payload
    assert BatchItemJob.from_dict(messages[1][1]).job.priority == 5  # the worker adds the batch offset
    assert BatchItemJob.from_dict(messages[2][1]).job.sampling.max_tokens == 7


def test_create_jsonl_batch(jobs, store, model):
    data = jsonl(
        {"custom_id": "x", "body": {"prompt": "hi", "sampling": {"maxTokens": 4}}},
        "",
        {
            "custom_id": "y",
            "body": {"model": model, "messages": [{"role": "user", "content": [{"text": "q"}]}]},
        },
        {"custom_id": "z", "body": {"prompt": "p", "sampling": {"max_tokens": 5, "temperature": 0}}},
        "   ",
    )
    batch = jobs.CreateBatch(pb.CreateBatchRequest(model=model, jsonl=data), timeout=10)
    assert batch.status == S.QUEUED and batch.counts.total == 3
    jobs_ = [BatchItemJob.from_dict(p) for _, p in queued(store, model)]
    assert [j.custom_id for j in jobs_] == ["x", "y", "z"] and [j.index for j in jobs_] == [0, 1, 2]
    assert jobs_[0].job.sampling.max_tokens == 4 and jobs_[2].job.sampling.temperature == 0
    assert jobs_[1].job.messages[0].parts[0].text == "q"
    assert store.redis.lrange(f"bailing:batch:{batch.id}:ids", 0, -1) == [b"x", b"y", b"z"]


BAD_BATCHES = {
    "malformed json": (
        jsonl({"custom_id": "a", "body": {"prompt": "p"}}, '{"custom_id": "b", "body": '),
        ["line 2: not valid JSON"],
    ),
    "missing custom_id": (jsonl({"body": {"prompt": "p"}}), ["line 1: custom_id is missing"]),
    "duplicate custom_id": (
        jsonl({"custom_id": "a", "body": {"prompt": "p"}}, {"custom_id": "a", "body": {"prompt": "q"}}),
        ["line 2: custom_id 'a' repeats line 1"],
    ),
    "bad temperature": (
        jsonl({"custom_id": "a", "body": {"prompt": "p", "sampling": {"temperature": -1}}}),
        ["line 1: sampling.temperature must be >= 0, got -1"],
    ),
    "wrong model": (
        jsonl({"custom_id": "a", "body": {"model": "other", "prompt": "p"}}),
        ["line 1: model 'other' differs from the batch's model"],
    ),
    "unknown body field": (
        jsonl({"custom_id": "a", "body": {"prompt": "p", "temprature": 1}}),
        ["line 1: body:", "temprature"],
    ),
    "several errors": (
        jsonl(
            {"custom_id": "a", "body": {"prompt": "p"}},
            {"custom_id": "b", "body": {"prompt": ""}},
            "[1, 2]",
            {"custom_id": "d", "body": {"prompt": "p", "sampling": {"topP": 2}}},
        ),
        [
            "3 of 4 batch items are invalid",
            "line 2: messages and prompt are both empty",
            "line 3:",
            "line 4: sampling.top_p",
        ],
    ),
    "empty jsonl": (b"\n  \n", ["the batch is empty"]),
    # found by `make fuzz`: json.loads raised RecursionError, and CreateBatch answered INTERNAL
    "json nested 100,000 deep": (
        jsonl({"custom_id": "a", "body": {"prompt": "p"}}, "[" * 100_000 + "]" * 100_000),
        ["1 of 2 batch items are invalid", "line 2: JSON nested too deeply"],
    ),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_invalid_jsonl_batch_is_rejected_whole(jobs, store, model, case):
    data, expected = BAD_BATCHES[case]
    err = rpc_error(jobs.CreateBatch, pb.CreateBatchRequest(model=model, jsonl=data), timeout=10)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    for text in expected:
        assert text in err.details(), err.details()
    assert queued(store, model) == []


def test_invalid_batch_requests(jobs, store, model):
    def reject(**kw) -> str:
        err = rpc_error(jobs.CreateBatch, pb.CreateBatchRequest(model=model, **kw), timeout=10)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        return err.details()

    assert "the batch is empty" in reject()
    assert "items and jsonl are both set" in reject(items=[item("a")], jsonl=b'{"custom_id": "b"}')
    assert "completion_window_s must be >= 0" in reject(items=[item("a")], completion_window_s=-1)
    image = pb.ContentPart(image=pb.Media(data=b"\x89PNG", mime_type="image/png"))
    media = pb.BatchItem(
        custom_id="m",
        request=pb.GenerateRequest(messages=[pb.Message(role="user", content=[image])]),
    )
    assert "items[1]: messages[0].content[0].image: not a decodable image" in reject(items=[item("a"), media])
    assert "items[0]: custom_id is missing" in reject(items=[item("")])
    err = rpc_error(jobs.CreateBatch, pb.CreateBatchRequest(model="nope", items=[item("a")]), timeout=10)
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert queued(store, model) == []


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # a PNG signature: the gateway checks no further


def image_item(custom_id: str, data: bytes = PNG) -> pb.BatchItem:
    image = pb.ContentPart(image=pb.Media(data=data, mime_type="image/png"))
    text = pb.ContentPart(text="what is this?")
    return pb.BatchItem(
        custom_id=custom_id,
        request=pb.GenerateRequest(messages=[pb.Message(role="user", content=[text, image])]),
    )


@pytest.mark.parametrize(("window", "ttl"), [(600, 600 + 3600), (0, 24 * 3600)])
def test_media_items_are_queued_with_their_bytes_parked_until_they_can_run(jobs, store, model, window, ttl):
    other = PNG + b"\x01"
    batch = jobs.CreateBatch(
        pb.CreateBatchRequest(
            model=model,
            items=[image_item("a"), item("t"), image_item("b", other), image_item("c")],
            completion_window_s=window,
        ),
        timeout=10,
    )
    jobs_sent = [BatchItemJob.from_dict(payload).job for _, payload in queued(store, model)]
    assert len(jobs_sent) == 4 and jobs_sent[1].messages is None
    refs = [job.messages[0].parts[1].media for i, job in enumerate(jobs_sent) if i != 1]
    assert refs[0].key == refs[2].key != refs[1].key  # content-addressed: equal bytes stored once
    for ref, data in zip(refs, (PNG, other, PNG), strict=True):
        assert store.redis.get(ref.key) == data
        assert ttl - 60 <= store.redis.ttl(ref.key) <= ttl  # the window plus the interactive TTL
    assert batch.counts.total == 4


def test_max_batch_items(start_gateway, channel_to, model):
    jobs = pb_grpc.JobsStub(channel_to(start_gateway((model,), max_batch_items=2).address))
    req = pb.CreateBatchRequest(model=model, items=[item("a"), item("b"), item("c")])
    err = rpc_error(jobs.CreateBatch, req, timeout=10)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "at most 2" in err.details()


def test_skip_invalid_items_fail_alone(jobs, store, model):
    bad = item("bad", sampling=pb.SamplingParams(temperature=-1))
    req = pb.CreateBatchRequest(
        model=model, items=[item("a"), bad, item("a"), item("c")], skip_invalid_items=True
    )
    batch = jobs.CreateBatch(req, timeout=10)
    assert batch.status == S.QUEUED
    assert (batch.counts.total, batch.counts.completed, batch.counts.failed) == (4, 0, 2)
    assert [BatchItemJob.from_dict(p).index for _, p in queued(store, model)] == [0, 3]
    got = results(jobs, batch.id)
    assert [(r.index, r.custom_id, r.error.code) for r in got] == [
        (1, "bad", "INVALID_ARGUMENT"),
        (2, "a", "INVALID_ARGUMENT"),
    ]
    assert "sampling.temperature must be >= 0" in got[0].error.message
    assert "repeats items[0]" in got[1].error.message
    for index, custom_id in ((0, "a"), (3, "c")):
        assert store.claim(batch.id, index, "w1", LIVE, 3.0) == "run"
        store.write_result(batch.id, answer(index, custom_id), Usage(3, 2))
    done = jobs.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=5)
    assert done.status == S.COMPLETED and (done.counts.completed, done.counts.failed) == (2, 2)


def test_all_items_invalid_with_skip_finishes_at_once(jobs, store, model):
    req = pb.CreateBatchRequest(model=model, jsonl=b"not json\n[]", skip_invalid_items=True)
    batch = jobs.CreateBatch(req, timeout=10)
    assert batch.status == S.COMPLETED and batch.finished_at > 0
    assert (batch.counts.total, batch.counts.failed) == (2, 2)
    assert queued(store, model) == []


# ---- read ---------------------------------------------------------------------------------------
def test_get_list_and_not_found(jobs, model):
    first = jobs.CreateBatch(pb.CreateBatchRequest(model=model, items=[item("a")]), timeout=10)
    second = jobs.CreateBatch(pb.CreateBatchRequest(model=model, items=[item("a")]), timeout=10)
    assert jobs.GetBatch(pb.GetBatchRequest(id=first.id), timeout=5) == first
    listed = [b.id for b in jobs.ListBatches(pb.ListBatchesRequest(), timeout=5).batches]
    assert listed.index(second.id) < listed.index(first.id)  # newest first
    assert len(jobs.ListBatches(pb.ListBatchesRequest(limit=1), timeout=5).batches) == 1
    err = rpc_error(jobs.ListBatches, pb.ListBatchesRequest(limit=-1), timeout=5)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    for call, req in (
        (jobs.GetBatch, pb.GetBatchRequest(id="batch_nope")),
        (jobs.CancelBatch, pb.CancelBatchRequest(id="batch_nope")),
        (
            lambda r, timeout: list(jobs.GetBatchResults(r, timeout=timeout)),
            pb.GetBatchResultsRequest(id="batch_nope"),
        ),
    ):
        err = rpc_error(call, req, timeout=5)
        assert err.code() is grpc.StatusCode.NOT_FOUND and "batch_nope" in err.details()
    err = rpc_error(jobs.GetBatch, pb.GetBatchRequest(), timeout=5)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "id is empty" in err.details()


def test_results_in_input_order_with_responses_and_errors(jobs, store, model):
    batch = jobs.CreateBatch(
        pb.CreateBatchRequest(model=model, items=[item("a"), item("b"), item("c")]), timeout=10
    )
    store.write_result(batch.id, answer(2, "c", "third"), Usage(3, 2, forwards=1))
    store.write_result(batch.id, ItemResult(0, "a", error={"code": "INTERNAL", "message": "boom"}))
    got = results(jobs, batch.id)
    assert [r.index for r in got] == [0, 2]  # unfinished items are skipped
    assert got[0].WhichOneof("outcome") == "error" and got[0].error == pb.BatchError(
        code="INTERNAL", message="boom"
    )
    response = got[1].response
    assert (got[1].custom_id, response.text, response.finish_reason) == ("c", "third", "stop")
    assert response.usage.completion_tokens == 2 and response.choices[0].text == "third"
    store.write_result(batch.id, answer(1, "b"), Usage(4, 1, cached_prompt_tokens=2, forwards=1))
    done = jobs.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=5)
    assert done.status == S.COMPLETED and (done.counts.completed, done.counts.failed) == (2, 1)
    assert done.usage == pb.Usage(
        prompt_tokens=7, completion_tokens=3, cached_prompt_tokens=2, forwards=2, tokens_per_forward=1.5
    )
    assert [r.custom_id for r in results(jobs, batch.id)] == ["a", "b", "c"]


def test_results_stream_in_pages(jobs, store, model):
    n = 1203  # more than two pages of RESULTS_PAGE
    data = jsonl(*({"custom_id": f"r{i}", "body": {"prompt": "p"}} for i in range(n)))
    batch = jobs.CreateBatch(pb.CreateBatchRequest(model=model, jsonl=data), timeout=30)
    assert len(queued(store, model)) == n
    for i in reversed(range(n)):  # workers finish in any order
        response = json_format.MessageToDict(pb.GenerateResponse(text=str(i)))
        store.write_result(batch.id, ItemResult(i, f"r{i}", response=response))
    got = results(jobs, batch.id)
    assert [r.index for r in got] == list(range(n)) and got[-1].response.text == str(n - 1)
    assert jobs.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=5).status == S.COMPLETED


# ---- cancel and expire ----------------------------------------------------------------------------
def test_cancel_without_running_items(jobs, model):
    batch = jobs.CreateBatch(pb.CreateBatchRequest(model=model, items=[item("a"), item("b")]), timeout=10)
    cancelled = jobs.CancelBatch(pb.CancelBatchRequest(id=batch.id), timeout=5)
    assert cancelled.status == S.CANCELLED and cancelled.counts.failed == 2 and cancelled.finished_at > 0
    assert [(r.index, r.error.code) for r in results(jobs, batch.id)] == [(0, "CANCELLED"), (1, "CANCELLED")]
    assert jobs.CancelBatch(pb.CancelBatchRequest(id=batch.id), timeout=5) == cancelled  # unchanged


def test_cancel_waits_for_the_running_item(jobs, store, model):
    req = pb.CreateBatchRequest(model=model, items=[item("a"), item("b"), item("c")])
    batch = jobs.CreateBatch(req, timeout=10)
    assert store.claim(batch.id, 1, "w1", LIVE, 3.0) == "run"
    assert jobs.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=5).status == S.RUNNING
    cancelling = jobs.CancelBatch(pb.CancelBatchRequest(id=batch.id), timeout=5)
    assert cancelling.status == S.CANCELLING and cancelling.counts.failed == 2
    assert store.claim(batch.id, 2, "w2", LIVE, 3.0) == "skip"  # a later delivery of an ended item
    store.write_result(batch.id, answer(1, "b"), Usage(3, 2))
    done = jobs.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=5)
    assert done.status == S.CANCELLED and (done.counts.completed, done.counts.failed) == (1, 2)
    got = results(jobs, batch.id)
    assert [r.WhichOneof("outcome") for r in got] == ["error", "response", "error"]


def test_expiry(jobs, model):
    req = pb.CreateBatchRequest(model=model, items=[item("a"), item("b")], completion_window_s=0.2)
    batch = jobs.CreateBatch(req, timeout=10)
    assert batch.status == S.QUEUED
    time.sleep(0.4)
    expired = jobs.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=5)
    assert expired.status == S.EXPIRED and expired.counts.failed == 2
    codes = [r.error.code for r in results(jobs, batch.id)]
    assert codes == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"]
    assert jobs.CancelBatch(pb.CancelBatchRequest(id=batch.id), timeout=5).status == S.EXPIRED


# ---- the service around it ----------------------------------------------------------------------
def test_batches_survive_a_gateway_restart(start_gateway, channel_to, redis_url, model):
    first = GatewayThread(GatewayConfig(redis_url=redis_url, models=(model,), port=0)).start()
    try:
        batch = pb_grpc.JobsStub(channel_to(first.address)).CreateBatch(
            pb.CreateBatchRequest(model=model, items=[item("a")]), timeout=10
        )
    finally:
        first.stop()
    second = start_gateway((model,))
    jobs = pb_grpc.JobsStub(channel_to(second.address))
    assert jobs.GetBatch(pb.GetBatchRequest(id=batch.id), timeout=5) == batch
    assert jobs.CancelBatch(pb.CancelBatchRequest(id=batch.id), timeout=5).status == S.CANCELLED


def test_jobs_need_the_bearer_token(start_gateway, channel_to, model):
    jobs = pb_grpc.JobsStub(channel_to(start_gateway((model,), api_token="s3cret").address))
    err = rpc_error(jobs.ListBatches, pb.ListBatchesRequest(), timeout=5)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    good = [("authorization", "Bearer s3cret")]
    assert jobs.ListBatches(pb.ListBatchesRequest(limit=1), timeout=5, metadata=good) is not None


def test_reflection_lists_the_jobs_service(start_gateway, channel_to, model):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel_to(start_gateway((model,)).address))
    (resp,) = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    assert "bailing.v1.Jobs" in {s.name for s in resp.list_services_response.service}
