"""A worker's life: fail fast on a bad checkpoint, register only once loaded, heartbeat, warm shutdown
on SIGTERM (the job in flight finishes and is acknowledged; the registry entry goes), stale after SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from pipelines.protocol import (
    HEARTBEAT_INTERVAL_S,
    WORKER_DEAD_AFTER_S,
    ErrorCode,
    EventType,
    GenerateJob,
    Sampling,
    WorkerInfo,
    queue_name,
    worker_info_key,
    workers_key,
)
from tests.workers.helpers import REPO, check_stream_shape, new_id, read_events, send


def _bailing(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bailing.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--family", "ling", "--model", "/nonexistent/ling"],
            "error: model folder /nonexistent/ling does not exist",
        ),
        (
            ["--family", "mystery", "--model", "/tmp"],
            "error: WorkerConfig.family must be one of ['ling', 'llada2', 'ming', 'ring'], got 'mystery'",
        ),
        (
            ["--family", "ming", "--model", "/tmp", "--max-audio-seconds", "0"],
            "error: WorkerConfig.max_audio_seconds must be a number > 0, got 0.0",
        ),
        (
            ["--family", "ming", "--model", "/tmp", "--max-video-frames", "0"],
            "error: WorkerConfig.max_video_frames must be an integer >= 1, got 0",
        ),
    ],
)
def test_bad_checkpoint_or_family_fails_fast_with_one_line(redis_url, rds, args, message):
    result = _bailing("worker", *args, "--redis-url", redis_url, "--name", "ling-never")
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert rds.zcard(workers_key("ling-never")) == 0


@pytest.mark.slow
def test_registers_after_loading_and_leaves_on_sigterm_after_finishing(start_worker, sender, rds):
    w = start_worker("ling", "--metrics-port", "0")
    first = w.wait_registered()
    assert "ready: model=ling" in w.log()  # the engine was loaded before the first heartbeat
    info = WorkerInfo.from_json(rds.get(worker_info_key(w.worker_id)))
    assert (info.worker_id, info.model, info.family, info.modalities) == (
        w.worker_id,
        "ling",
        "ling",
        ("text",),
    )
    assert (info.max_model_len, info.pid, info.device) == (4096, w.proc.pid, "cpu")
    assert 0 < rds.ttl(worker_info_key(w.worker_id)) <= 10
    time.sleep(HEARTBEAT_INTERVAL_S * 2.5)
    assert w.heartbeat() > first and time.time() - w.heartbeat() < WORKER_DEAD_AFTER_S

    # a job in flight when SIGTERM arrives runs to the end and is acknowledged (warm shutdown)
    job = GenerateJob(
        request_id=new_id(),
        model="ling",
        prompt="Go",
        sampling=Sampling(max_tokens=600, temperature=0.0, ignore_eos=True),
    )
    send(sender, job)
    read_events(rds, job.request_id, until=lambda e: e.type == EventType.DELTA)
    w.signal(signal.SIGTERM)
    events = read_events(rds, job.request_id, timeout=60)
    check_stream_shape(events, EventType.DONE)
    assert events[-1].usage.completion_tokens == 600
    assert w.proc.wait(timeout=30) == 0
    assert w.heartbeat() is None and rds.get(worker_info_key(w.worker_id)) is None
    # acknowledged: neither queued nor waiting in kombu's unacked hash (other tests may leave theirs)
    assert rds.llen(queue_name("ling")) == 0
    assert not [v for v in rds.hvals("unacked") if job.request_id.encode() in v]


@pytest.mark.slow
def test_heartbeat_goes_stale_after_sigkill(start_worker, rds):
    w = start_worker("ling-killed")
    w.wait_registered()
    w.signal(signal.SIGKILL)
    w.proc.wait(timeout=10)
    last = w.heartbeat()
    time.sleep(WORKER_DEAD_AFTER_S + 0.5)
    assert w.heartbeat() == last  # nobody beats for it any more: readers see it as dead
    assert time.time() - last > WORKER_DEAD_AFTER_S
    rds.zrem(workers_key("ling-killed"), w.worker_id)


@pytest.mark.slow
def test_sigterm_grace_period_over_ends_running_requests_cleanly(start_worker, sender, rds):
    w = start_worker("ling-grace", "--shutdown-grace", "0.5")
    w.wait_registered()
    job = GenerateJob(
        request_id=new_id(),
        model="ling-grace",
        prompt="Go on",
        sampling=Sampling(max_tokens=3000, temperature=0.0, ignore_eos=True),
    )
    send(sender, job)
    read_events(rds, job.request_id, until=lambda e: e.type == EventType.DELTA)
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    events = read_events(rds, job.request_id, timeout=30)
    check_stream_shape(events, EventType.ERROR)
    assert events[-1].error_code == ErrorCode.UNAVAILABLE and time.monotonic() - t0 < 3.0
    assert w.proc.wait(timeout=30) == 0
    assert w.heartbeat() is None
    assert rds.llen(queue_name("ling-grace")) == 0
    assert not [v for v in rds.hvals("unacked") if job.request_id.encode() in v]  # acknowledged
