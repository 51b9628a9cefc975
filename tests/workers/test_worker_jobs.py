"""One real `bailing worker` (demo Ling, real Redis, real Celery) serving jobs: streams, batching,
cancel, deadlines, redelivery and bad input."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest

from engine import LLM, SamplingParams
from pipelines.protocol import (
    CANCEL_CHANNEL,
    ChatMessage,
    ErrorCode,
    Event,
    EventType,
    GenerateJob,
    MediaRef,
    Part,
    Sampling,
    cancel_key,
    queue_name,
    stream_key,
)
from tests.workers.helpers import (
    KV_BYTES,
    WorkerProcess,
    check_stream_shape,
    free_port,
    new_id,
    read_events,
    send,
)

NAME = "ling-jobs"  # a queue of this module's own
LONG = Sampling(max_tokens=3000, temperature=0.0, ignore_eos=True)  # ~10 s on the demo model: cut short


@pytest.fixture(scope="module")
def worker(redis_url, demo_ling, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    w = WorkerProcess(redis_url, demo_ling, log, NAME, "--max-num-seqs", "32", "--metrics-port", str(port))
    w.metrics_port = port
    try:
        w.wait_registered()
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def offline(demo_ling):
    return LLM(demo_ling, kv_cache_bytes=KV_BYTES)


def job(**kw) -> GenerateJob:
    return GenerateJob(request_id=new_id(), model=NAME, **kw)


def run(sender, rds, j: GenerateJob, timeout: float = 60.0) -> list[Event]:
    send(sender, j)
    return read_events(rds, j.request_id, timeout)


def streamed_text(events: list[Event]) -> str:
    return "".join(e.text for e in events if e.type == EventType.DELTA)


def metric(w: WorkerProcess, name: str) -> float:
    """The sum of all samples of `name` (over its labels) on the worker's /metrics page."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_port}/metrics", timeout=5).read().decode()
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.split("{")[0].split(" ")[0] == name
    ]
    assert values, f"{name} not in /metrics"
    return sum(values)


# ---- normal streams --------------------------------------------------------------------------------
def test_greedy_prompt_streams_what_the_offline_engine_generates(worker, sender, rds, offline):
    j = job(prompt="The quick brown fox", sampling=Sampling(max_tokens=24, temperature=0.0))
    events = run(sender, rds, j)
    check_stream_shape(events, EventType.DONE)
    assert events[0].worker_id == worker.worker_id
    want = offline.generate("The quick brown fox", SamplingParams(max_tokens=24, temperature=0.0))[0]
    assert streamed_text(events) == want.text and len(events) > 3
    done = events[-1]
    assert done.finish_reason == want.finish_reason
    assert done.usage.prompt_tokens == len(want.prompt_token_ids)
    assert done.usage.completion_tokens == len(want.token_ids)
    assert done.usage.forwards == done.usage.completion_tokens  # autoregressive: one token per forward
    assert 0 < rds.ttl(stream_key(j.request_id)) <= 3600


def test_chat_job_matches_offline_chat(worker, sender, rds, offline):
    msgs = (
        ChatMessage("system", (Part("text", text="You are terse."),)),
        ChatMessage("user", (Part("text", text="Name a colour."),)),
    )
    j = job(messages=msgs, sampling=Sampling(max_tokens=20, temperature=0.0))
    events = run(sender, rds, j)
    check_stream_shape(events, EventType.DONE)
    want = offline.chat(
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
        SamplingParams(max_tokens=20, temperature=0.0),
    )[0]
    assert streamed_text(events) == want.text
    assert events[-1].usage.prompt_tokens == len(want.prompt_token_ids)


def test_unset_max_tokens_uses_the_default(worker, sender, rds):
    events = run(sender, rds, job(prompt="Once", sampling=Sampling(temperature=0.0, ignore_eos=True)))
    assert events[-1].usage.completion_tokens == 256 and events[-1].finish_reason == "length"


def test_concurrent_jobs_are_batched(worker, sender, rds):
    """20 jobs at once: all complete, share engine steps, and their events share Redis round trips."""
    events_before = metric(worker, "bailing_worker_stream_events_total")
    writes_before = metric(worker, "bailing_worker_stream_writes_total")
    sampling = Sampling(max_tokens=96, temperature=0.0, ignore_eos=True)  # long enough to overlap
    jobs = [job(prompt=f"Story {i}:", sampling=sampling) for i in range(20)]
    for j in jobs:
        send(sender, j)
    streamed = 0
    for j in jobs:
        events = read_events(rds, j.request_id, timeout=120)
        check_stream_shape(events, EventType.DONE)
        assert events[-1].usage.completion_tokens == 96
        streamed += len(events)
    end = time.monotonic() + 5  # the heartbeat copies the engine's gauges once a second
    while metric(worker, "bailing_worker_batch_size_max") < 16 and time.monotonic() < end:
        time.sleep(0.2)
    assert metric(worker, "bailing_worker_batch_size_max") >= 16
    assert metric(worker, "bailing_worker_requests_total") >= 20
    assert metric(worker, "bailing_worker_batch_size_count") == metric(
        worker, "bailing_worker_engine_steps_total"
    )
    # the emitter writes everything queued in one pipelined round trip: far fewer writes than events
    assert metric(worker, "bailing_worker_stream_events_total") - events_before == streamed
    assert metric(worker, "bailing_worker_stream_writes_total") - writes_before < streamed / 4


# ---- cancel and deadlines ----------------------------------------------------------------------------
def test_cancel_frees_the_slot_within_one_step(worker, sender, rds):
    j = job(prompt="Tell me everything", sampling=LONG)
    send(sender, j)
    first = read_events(rds, j.request_id, until=lambda e: e.type == EventType.DELTA)
    assert first[-1].type == EventType.DELTA
    rds.set(cancel_key(j.request_id), 1, ex=60)
    t0 = time.monotonic()
    rds.publish(CANCEL_CHANNEL, j.request_id)
    events = read_events(rds, j.request_id, timeout=30)
    elapsed = time.monotonic() - t0
    check_stream_shape(events, EventType.CANCELLED)
    end = events[-1]
    assert end.error_code == ErrorCode.CANCELLED and elapsed < 2.0
    assert end.info["abort_step"] - end.info["cancel_seen_step"] <= 1
    assert len(events) < 1000  # cut well short of 3000 tokens
    after = run(sender, rds, job(prompt="Next", sampling=Sampling(max_tokens=5, temperature=0.0)))
    check_stream_shape(after, EventType.DONE)


def test_cancel_flag_set_before_the_worker_takes_the_job(worker, sender, rds):
    j = job(prompt="never", sampling=LONG)
    rds.set(cancel_key(j.request_id), 1, ex=60)
    events = run(sender, rds, j)
    assert [(e.seq, e.type, e.error_code) for e in events] == [(0, EventType.CANCELLED, ErrorCode.CANCELLED)]


def test_expired_deadline_is_not_run(worker, sender, rds):
    events = run(sender, rds, job(prompt="late", sampling=LONG, deadline=time.time() - 1))
    assert [(e.seq, e.type, e.error_code) for e in events] == [
        (0, EventType.CANCELLED, ErrorCode.DEADLINE_EXCEEDED)
    ]


def test_deadline_passing_mid_run_cancels(worker, sender, rds):
    t0 = time.time()
    events = run(sender, rds, job(prompt="slow", sampling=LONG, deadline=t0 + 0.6))
    check_stream_shape(events, EventType.CANCELLED)
    assert events[-1].error_code == ErrorCode.DEADLINE_EXCEEDED
    assert events[-1].time - t0 < 2.0 and len(events) > 2


def test_redelivered_job_with_a_terminal_event_writes_nothing(worker, sender, rds):
    j = job(prompt="again", sampling=Sampling(max_tokens=5, temperature=0.0))
    done = Event(seq=0, type=EventType.DONE, finish_reason="stop", time=time.time())
    rds.xadd(stream_key(j.request_id), done.encode())
    send(sender, j)
    probe = run(sender, rds, job(prompt="probe", sampling=Sampling(max_tokens=5, temperature=0.0)))
    check_stream_shape(probe, EventType.DONE)
    time.sleep(0.3)
    assert rds.xlen(stream_key(j.request_id)) == 1


# ---- bad input ------------------------------------------------------------------------------------
def _image_job() -> GenerateJob:
    media = MediaRef(kind="image", key="bailing:media:ab", mime_type="image/png", size=10)
    parts = (Part("text", text="what is this?"), Part("image", media=media))
    return job(messages=(ChatMessage("user", parts),))


BAD_JOBS = {
    "prompt beyond the context": (
        lambda: job(prompt="hello " * 5000),
        r"prompt has \d+ tokens; the model's context is 4096",
    ),
    "max_tokens beyond the context": (
        lambda: job(prompt="hello", sampling=Sampling(max_tokens=5000)),
        r"max_tokens is 5000, but the prompt \(\d+ tokens\) leaves room for only \d+ new tokens",
    ),
    "image on a text model": (
        _image_job,
        r"model 'ling-jobs' accepts only text; messages\[0\]\.content\[1\] is an image",
    ),
    "bad temperature": (lambda: job(prompt="x", sampling=Sampling(temperature=-2.0)), "temperature must be"),
    "n out of range": (
        lambda: job(prompt="x", sampling=Sampling(n=17)),
        r"sampling\.n must be an integer in \[1, 16\], got 17",
    ),
    "thinking budget on a model that does not reason": (
        lambda: job(prompt="x", thinking_budget=5),
        "reasoning.thinking_budget applies to reasoning models; model 'ling-jobs' answers directly",
    ),
    "diffusion options on an autoregressive model": (
        lambda: job(prompt="x", diffusion={"block_length": 8}),
        "diffusion options apply to diffusion models .*; model 'ling-jobs' is autoregressive",
    ),
    "wrong model": (
        lambda: GenerateJob(request_id=new_id(), model="ring", prompt="x"),
        "model 'ring' sent to the queue of 'ling-jobs'",
    ),
}


def test_bad_inputs_get_invalid_argument_and_the_worker_goes_on(worker, sender, rds):
    import re

    rids = {}
    for label, (make, _) in BAD_JOBS.items():
        rids[label] = send(sender, make(), queue=queue_name(NAME))
    malformed = new_id()
    sender.send_task(
        "bailing.generate",
        args=[{"request_id": malformed, "bogus": 1}],
        task_id=malformed,
        queue=queue_name(NAME),
    )
    not_a_dict = new_id()
    sender.send_task("bailing.generate", args=["junk", 2], task_id=not_a_dict, queue=queue_name(NAME))
    for label, (_, message) in BAD_JOBS.items():
        events = read_events(rds, rids[label])
        check_stream_shape(events, EventType.ERROR)
        assert events[-1].error_code == ErrorCode.INVALID_ARGUMENT, label
        assert re.search(message, events[-1].message), (label, events[-1].message)
        assert "Traceback" not in events[-1].message
    for rid in (malformed, not_a_dict):
        events = read_events(rds, rid)
        assert [(e.type, e.error_code) for e in events] == [(EventType.ERROR, ErrorCode.INVALID_ARGUMENT)]
        assert events[0].message.startswith("malformed job payload")
    good = run(sender, rds, job(prompt="fine", sampling=Sampling(max_tokens=4, temperature=0.0)))
    check_stream_shape(good, EventType.DONE)
    assert worker.proc.poll() is None


def test_many_cancels_and_jobs_at_once_leave_others_untouched(worker, sender, rds, offline):
    """Cancelled neighbours do not change a greedy stream running in the same batches."""
    keep = job(prompt="Steady", sampling=Sampling(max_tokens=40, temperature=0.0, ignore_eos=True))
    others = [job(prompt=f"noise {i}", sampling=LONG) for i in range(6)]
    for j in [keep, *others]:
        send(sender, j)
    for j in others:
        read_events(rds, j.request_id, until=lambda e: e.type == EventType.DELTA)

    def cancel_all():
        for j in others:
            rds.publish(CANCEL_CHANNEL, j.request_id)

    threading.Thread(target=cancel_all).start()
    events = read_events(rds, keep.request_id)
    want = offline.generate("Steady", SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True))[0]
    assert streamed_text(events) == want.text
    for j in others:
        assert read_events(rds, j.request_id)[-1].type == EventType.CANCELLED
