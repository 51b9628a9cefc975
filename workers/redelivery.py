"""What a worker does with a job before running it: drop it when a redelivery made it moot.

Celery over Redis delivers at least once, so a job can arrive again (worker killed before its ack,
visibility timeout passed). Flow: read the request's stream -> terminal event already there: drop;
STARTED by a worker that still heartbeats: drop (it is running there); deadline passed or cancel
flag set: write CANCELLED; half-written by a dead worker: write ERROR UNAVAILABLE (running it again
would repeat text the client already has); otherwise run it, numbering events from 0.
"""

from __future__ import annotations

import logging

import redis

from pipelines.clock import server_now
from pipelines.protocol import (
    STREAM_TTL_S,
    WORKER_DEAD_AFTER_S,
    ErrorCode,
    Event,
    EventType,
    GenerateJob,
    cancel_key,
    stream_key,
    workers_key,
)

log = logging.getLogger(__name__)


def check(client: redis.Redis, job: GenerateJob, model: str) -> tuple[bool, Event | None]:
    """(whether to run the job, the terminal event written instead of running it, if any)."""
    key, rid = stream_key(job.request_id), job.request_id
    last = client.xrevrange(key, count=1)
    next_seq = 0
    if last:
        last_event = Event.decode(last[0][1])
        if last_event.terminal:
            log.info("request %s already has a terminal event; dropping the redelivered job", rid)
            return False, None
        first = Event.decode(client.xrange(key, count=1)[0][1])
        if _alive(client, model, first.worker_id):
            log.info("request %s is running on %s; dropping the duplicate", rid, first.worker_id)
            return False, None
        next_seq = last_event.seq + 1
    deadline = job_deadline(job)
    if deadline is not None and server_now() >= deadline:
        message = "the request's deadline passed before a worker took it"
        return False, _terminal(
            client, rid, next_seq, EventType.CANCELLED, ErrorCode.DEADLINE_EXCEEDED, message
        )
    if client.exists(cancel_key(rid)):
        message = "cancelled by the client before a worker took it"
        return False, _terminal(client, rid, next_seq, EventType.CANCELLED, ErrorCode.CANCELLED, message)
    if next_seq:
        message = "the worker serving this request stopped before finishing it"
        return False, _terminal(client, rid, next_seq, EventType.ERROR, ErrorCode.UNAVAILABLE, message)
    return True, None


def job_deadline(job: GenerateJob) -> float | None:
    """The job's deadline as unix time, or None when it has none (or a value that is not a time)."""
    d = job.deadline
    if d is None or isinstance(d, bool) or not isinstance(d, (int, float)) or d <= 0:
        return None
    return float(d)


def write_event(client: redis.Redis, request_id: str, event: Event) -> None:
    """Append one event to the request's stream and refresh the stream's TTL (one round trip)."""
    key = stream_key(request_id)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, event.encode())
    pipe.expire(key, STREAM_TTL_S)
    pipe.execute()


def _terminal(
    client: redis.Redis, rid: str, seq: int, type_: EventType, code: ErrorCode, message: str
) -> Event:
    log.info("request %s not run: %s (%s)", rid, message, code)
    event = Event(seq=seq, type=type_, error_code=code, message=message, time=server_now())
    write_event(client, rid, event)
    return event


def _alive(client: redis.Redis, model: str, worker_id: str) -> bool:
    if not worker_id:
        return False
    score = client.zscore(workers_key(model), worker_id)
    return score is not None and server_now() - score < WORKER_DEAD_AFTER_S
