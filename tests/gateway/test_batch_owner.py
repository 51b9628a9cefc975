"""Batch ownership on a real gateway and Redis: with bearer tokens, a batch is visible only to the token
that created it (other tokens get NOT_FOUND, as for an unknown id, and a filtered list); Redis holds
the token's owner id, never the token; without tokens nothing changes."""

from __future__ import annotations

import grpc
import pytest
import redis

from gateway.api import pb, pb_grpc
from gateway.tokens import owner_id
from pipelines.batches import BatchStatus, batch_key

S = pb.BatchStatus


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def create(jobs, model: str, token: str | None) -> pb.BatchInfo:
    items = [pb.BatchItem(custom_id=f"c{i}", request=pb.GenerateRequest(prompt="hello")) for i in range(2)]
    request = pb.CreateBatchRequest(model=model, items=items)
    return jobs.CreateBatch(request, timeout=10, metadata=bearer(token) if token else None)


def not_found(call, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    return info.value.details()


def listed(jobs, token: str | None) -> set[str]:
    reply = jobs.ListBatches(pb.ListBatchesRequest(), timeout=5, metadata=bearer(token) if token else None)
    return {b.id for b in reply.batches}


def test_another_token_cannot_see_or_touch_a_batch(start_gateway, channel_to, model, redis_url):
    gw = start_gateway((model,), api_tokens=("alice-token", "bob-token"))
    jobs = pb_grpc.JobsStub(channel_to(gw.address))
    alice, bob = bearer("alice-token"), bearer("bob-token")
    mine = create(jobs, model, "alice-token")
    theirs = create(jobs, model, "bob-token")

    unknown = "batch_" + "0" * 32
    expected = not_found(jobs.GetBatch, pb.GetBatchRequest(id=unknown), timeout=5, metadata=bob)
    same = expected.replace(unknown, mine.id)  # indistinguishable from an id that does not exist
    assert not_found(jobs.GetBatch, pb.GetBatchRequest(id=mine.id), timeout=5, metadata=bob) == same
    results = pb.GetBatchResultsRequest(id=mine.id)
    assert not_found(lambda: list(jobs.GetBatchResults(results, timeout=5, metadata=bob))) == same
    assert not_found(jobs.CancelBatch, pb.CancelBatchRequest(id=mine.id), timeout=5, metadata=bob) == same

    assert jobs.GetBatch(pb.GetBatchRequest(id=mine.id), timeout=5, metadata=alice).status == S.QUEUED
    assert list(jobs.GetBatchResults(results, timeout=5, metadata=alice)) == []  # nothing ran yet
    assert listed(jobs, "alice-token") == {mine.id} and listed(jobs, "bob-token") == {theirs.id}
    cancelled = jobs.CancelBatch(pb.CancelBatchRequest(id=mine.id), timeout=5, metadata=alice)
    assert cancelled.status == S.CANCELLED

    db = redis.Redis.from_url(redis_url)
    try:
        record = db.hgetall(batch_key(mine.id))
        assert record[b"owner"].decode() == owner_id("alice-token")
        assert not any(b"alice-token" in value for value in record.values())
    finally:
        db.close()


def test_without_tokens_batches_have_no_owner(start_gateway, channel_to, model, redis_url):
    open_gw = start_gateway((model,))
    jobs = pb_grpc.JobsStub(channel_to(open_gw.address))
    anonymous = create(jobs, model, None)
    guarded = pb_grpc.JobsStub(channel_to(start_gateway((model,), api_token="carol-token").address))
    owned = create(guarded, model, "carol-token")
    # no tokens: every batch, as before (the owned one too)
    assert {anonymous.id, owned.id} <= listed(jobs, None)
    assert jobs.GetBatch(pb.GetBatchRequest(id=owned.id), timeout=5).id == owned.id
    # with tokens, a batch made without one belongs to nobody
    carol = bearer("carol-token")
    not_found(guarded.GetBatch, pb.GetBatchRequest(id=anonymous.id), timeout=5, metadata=carol)
    assert listed(guarded, "carol-token") == {owned.id}
    db = redis.Redis.from_url(redis_url)
    try:
        assert db.hget(batch_key(anonymous.id), "owner") == b""
        assert db.hget(batch_key(anonymous.id), "status").decode() == BatchStatus.QUEUED.value
    finally:
        db.close()
