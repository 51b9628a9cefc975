"""WorkerRuntime in-process (real engine, real Redis, no Celery): failure paths that a subprocess test
cannot provoke — an engine step that raises, shutdown with requests in flight, half-written streams."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.protocol import (
    CANCEL_CHANNEL,
    ErrorCode,
    Event,
    EventType,
    GenerateJob,
    Sampling,
    cancel_key,
    stream_key,
    workers_key,
)
from tests.workers.helpers import KV_BYTES, check_stream_shape, new_id, read_events
from workers.config import WorkerConfig
from workers.runtime import WorkerRuntime

LONG = Sampling(max_tokens=3000, temperature=0.0, ignore_eos=True)


@pytest.fixture()
def runtime(redis_url, demo_ling):
    name = f"ling-rt-{new_id()[:6]}"
    rt = WorkerRuntime(WorkerConfig(redis_url, "ling", demo_ling, name=name, kv_cache_bytes=KV_BYTES))
    rt.start()
    yield rt
    rt.close()


def submit(rt: WorkerRuntime, job: GenerateJob) -> threading.Thread:
    t = threading.Thread(target=rt.run, args=(job,), daemon=True)
    t.start()
    return t


def test_a_failing_engine_step_ends_streams_with_internal_and_the_worker_recovers(runtime, rds, monkeypatch):
    execute = runtime.engine.runner.execute
    jobs = [
        GenerateJob(request_id=new_id(), model=runtime.config.name, prompt=f"p{i}", sampling=LONG)
        for i in range(3)
    ]
    threads = [submit(runtime, j) for j in jobs]
    for j in jobs:
        read_events(rds, j.request_id, until=lambda e: e.type == EventType.DELTA)

    def boom(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(runtime.engine.runner, "execute", boom)
    for j in jobs:
        events = read_events(rds, j.request_id)
        check_stream_shape(events, EventType.ERROR)
        assert events[-1].error_code == ErrorCode.INTERNAL
        assert j.request_id in events[-1].message and "CUDA" not in events[-1].message
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    monkeypatch.setattr(runtime.engine.runner, "execute", execute)
    good = GenerateJob(
        request_id=new_id(), model=runtime.config.name, prompt="ok", sampling=Sampling(max_tokens=3)
    )
    submit(runtime, good)
    check_stream_shape(read_events(rds, good.request_id), EventType.DONE)


def test_a_grammar_failing_mid_request_is_invalid_argument_and_spares_the_others(runtime, rds, monkeypatch):
    """A matcher error (llguidance refusing a state the gateway's check could not foresee) ends that
    request with INVALID_ARGUMENT and the grammar's message; a request beside it finishes."""
    from engine.structured.constraint import GrammarConstraint
    from pipelines.protocol import ChatMessage, Part, ResponseFormat

    def broken(self, output_token_ids):
        self.error = "parser too complex"

    monkeypatch.setattr(GrammarConstraint, "advance", broken)
    ask = (ChatMessage("user", (Part("text", "hi"),)),)
    held = GenerateJob(
        request_id=new_id(),
        model=runtime.config.name,
        messages=ask,
        sampling=Sampling(max_tokens=16),
        response_format=ResponseFormat("json_object"),
    )
    free = GenerateJob(
        request_id=new_id(), model=runtime.config.name, prompt="ok", sampling=Sampling(max_tokens=8)
    )
    threads = [submit(runtime, held), submit(runtime, free)]
    events = read_events(rds, held.request_id)
    check_stream_shape(events, EventType.ERROR)
    assert events[-1].error_code == ErrorCode.INVALID_ARGUMENT
    assert events[-1].message.startswith("structured output: parser too complex")
    check_stream_shape(read_events(rds, free.request_id), EventType.DONE)
    for t in threads:
        t.join(timeout=10)


def test_close_ends_requests_in_flight_with_unavailable(redis_url, demo_ling, rds):
    name = f"ling-rt-{new_id()[:6]}"
    rt = WorkerRuntime(WorkerConfig(redis_url, "ling", demo_ling, name=name, kv_cache_bytes=KV_BYTES))
    rt.start()
    job = GenerateJob(request_id=new_id(), model=name, prompt="forever", sampling=LONG)
    t = submit(rt, job)
    read_events(rds, job.request_id, until=lambda e: e.type == EventType.DELTA)
    assert rds.zscore(workers_key(name), rt.config.worker_id) is not None
    rt.close()
    t.join(timeout=10)
    events = read_events(rds, job.request_id, timeout=5)
    check_stream_shape(events, EventType.ERROR)
    assert events[-1].error_code == ErrorCode.UNAVAILABLE
    assert rds.zscore(workers_key(name), rt.config.worker_id) is None


def _half_written(rds, request_id: str, worker_id: str) -> None:
    key = stream_key(request_id)
    rds.xadd(key, Event(seq=0, type=EventType.STARTED, worker_id=worker_id, time=time.time()).encode())
    rds.xadd(key, Event(seq=1, type=EventType.DELTA, text="partial", time=time.time()).encode())


def test_half_written_stream_of_a_dead_worker_gets_unavailable_not_a_rerun(runtime, rds):
    job = GenerateJob(
        request_id=new_id(), model=runtime.config.name, prompt="x", sampling=Sampling(max_tokens=3)
    )
    _half_written(rds, job.request_id, "ling@gone:1")
    runtime.run(job)
    events = read_events(rds, job.request_id, timeout=5)
    assert [(e.seq, e.type) for e in events] == [
        (0, EventType.STARTED),
        (1, EventType.DELTA),
        (2, EventType.ERROR),
    ]
    assert events[-1].error_code == ErrorCode.UNAVAILABLE


def test_half_written_stream_of_a_live_worker_is_left_alone(runtime, rds):
    job = GenerateJob(
        request_id=new_id(), model=runtime.config.name, prompt="x", sampling=Sampling(max_tokens=3)
    )
    rds.zadd(workers_key(runtime.config.name), {"ling@alive:2": time.time()})
    _half_written(rds, job.request_id, "ling@alive:2")
    runtime.run(job)
    assert rds.xlen(stream_key(job.request_id)) == 2
    rds.zrem(workers_key(runtime.config.name), "ling@alive:2")


def test_a_duplicate_of_a_job_running_here_is_dropped(runtime, rds):
    job = GenerateJob(request_id=new_id(), model=runtime.config.name, prompt="dup", sampling=LONG)
    t = submit(runtime, job)
    read_events(rds, job.request_id, until=lambda e: e.type == EventType.DELTA)
    runtime.run(job)  # returns at once: the stream's STARTED names this (live) worker
    assert len(runtime.flights) == 1
    runtime.cancel(job.request_id, runtime.engine.metrics.steps)
    t.join(timeout=10)
    events = read_events(rds, job.request_id)
    check_stream_shape(events, EventType.CANCELLED)


def test_cancel_listener_reconnects_after_losing_its_connection(runtime, rds):
    job = GenerateJob(request_id=new_id(), model=runtime.config.name, prompt="listen", sampling=LONG)
    t = submit(runtime, job)
    read_events(rds, job.request_id, until=lambda e: e.type == EventType.DELTA)
    name = f"bailing-worker:{runtime.config.worker_id}"
    killed = 0
    for client in rds.client_list():
        if client.get("name") == name and client.get("sub") not in (None, "0"):
            rds.client_kill_filter(_id=client["id"])
            killed += 1
    assert killed == 1
    rds.set(cancel_key(job.request_id), 1, ex=60)  # what the gateway does: flag, then publish
    rds.publish(CANCEL_CHANNEL, job.request_id)
    events = read_events(rds, job.request_id, timeout=10)
    check_stream_shape(events, EventType.CANCELLED)
    t.join(timeout=10)
