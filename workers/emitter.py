"""The emitter: ONE thread turns engine outputs and control items into stream events and writes them.

Flow: the engine thread puts each request's `RequestOutput` snapshots into the shared queue; task,
cancel and deadline paths put `Control` items (STARTED, and the terminal events the engine cannot
know: CANCELLED with its reason, ERROR for bad input). The emitter blocks for one item, drains
everything else already queued, numbers the events per request (`Flight.next_seq`), writes them all
in one pipelined round trip (XADD each, EXPIRE each stream once) and then wakes the task threads
whose request reached its terminal event. The first terminal event of a request wins; anything
queued for it afterwards is dropped, so every stream ends with exactly one terminal event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from engine.outputs import RequestOutput
from engine.structured.constraint import FAILED as STRUCTURED_OUTPUT_FAILED
from pipelines.clock import server_now
from pipelines.output import Presenter
from pipelines.protocol import STREAM_TTL_S, ErrorCode, Event, EventType, stream_key
from workers.metrics import WorkerMetrics

if TYPE_CHECKING:
    from workers.spoken_reply import SpokenReply

log = logging.getLogger(__name__)

_MAX_BATCH = 4096  # items per round trip at most (bounds one pipeline's size)
_WRITE_RETRY_S = 30.0  # keep retrying a failed write this long before giving the batch up
_STOP = object()


@dataclass
class Flight:
    """One request this worker has taken: numbering of its events, and how its task thread waits."""

    request_id: str
    next_seq: int = 0
    done: threading.Event = field(default_factory=threading.Event)  # set once the terminal is written
    lock: threading.Lock = field(default_factory=threading.Lock)  # orders add_request vs. abort
    added: bool = False  # the engine has it
    stopping: bool = False  # a cancel, deadline or shutdown already ended it
    finished: bool = False  # its terminal event has been produced (emitter thread only)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    queued_s: float = 0.0  # from the gateway's submit to this worker taking it
    ttft_s: float = 0.0  # engine admission to first token
    presenter: Presenter | None = None  # turns its outputs into text/reasoning deltas (emitter thread)
    reply: SpokenReply | None = None  # a chat reply also spoken: gets its text, and then its DONE


class Flights:
    """The requests in flight in this process, by request id (thread-safe)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Flight] = {}
        self._lock = threading.Lock()

    def add(self, flight: Flight) -> bool:
        with self._lock:
            if flight.request_id in self._by_id:
                return False
            self._by_id[flight.request_id] = flight
            return True

    def get(self, request_id: str) -> Flight | None:
        with self._lock:
            return self._by_id.get(request_id)

    def pop(self, request_id: str) -> Flight | None:
        with self._lock:
            return self._by_id.pop(request_id, None)

    def all(self) -> list[Flight]:
        with self._lock:
            return list(self._by_id.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)


@dataclass(frozen=True)
class _Barrier:
    done: threading.Event


@dataclass(frozen=True)
class Control:
    """An event the engine does not produce: `fields` are Event fields besides seq and time."""

    request_id: str
    type: EventType
    fields: dict[str, Any] = field(default_factory=dict)


class Emitter:
    def __init__(self, client: redis.Redis, flights: Flights, metrics: WorkerMetrics, model: str) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._redis, self._flights, self._metrics, self._model = client, flights, metrics, model
        self._thread = threading.Thread(target=self._loop, name="bailing-emitter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self.queue.put(_STOP)
        self._thread.join(timeout=_WRITE_RETRY_S + 5)

    def put(self, item: Control) -> None:
        self.queue.put(item)

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything queued before this call is written (False on timeout)."""
        done = threading.Event()
        self.queue.put(_Barrier(done))
        return done.wait(timeout)

    # ---- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        stop = False
        while not stop:
            batch = [self.queue.get()]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            barriers = [item for item in batch if isinstance(item, _Barrier)]
            try:
                self._emit([item for item in batch if item is not _STOP and not isinstance(item, _Barrier)])
            except Exception:  # never let the emitter die: task threads wait on it
                log.exception("emitter failed on a batch of %d items", len(batch))
            for barrier in barriers:  # everything queued before it is written (or given up on)
                barrier.done.set()

    def _emit(self, batch: list[Any]) -> None:
        events: list[tuple[Flight, Event]] = []
        for item in batch:
            events += self._from_output(item) if isinstance(item, RequestOutput) else self._from_control(item)
        if not events:
            return
        try:
            self._write(events)
        finally:
            for flight, ev in events:
                if ev.terminal:
                    self._flights.pop(flight.request_id)
                    flight.done.set()

    def _write(self, events: list[tuple[Flight, Event]]) -> None:
        """All events in one pipelined round trip; retried on connection errors for a while."""
        deadline, delay = time.monotonic() + _WRITE_RETRY_S, 0.05
        while True:
            pipe = self._redis.pipeline(transaction=False)
            for flight, ev in events:
                pipe.xadd(stream_key(flight.request_id), ev.encode())
            for rid in dict.fromkeys(f.request_id for f, _ in events):
                pipe.expire(stream_key(rid), STREAM_TTL_S)
            try:
                pipe.execute()
                self._metrics.stream_writes.inc()
                self._metrics.stream_events.inc(len(events))
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    rids = sorted({f.request_id for f, _ in events})
                    log.error("giving up writing %d events (requests %s): %s", len(events), rids, exc)
                    return
                log.warning("redis write failed (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # ---- items -> events ---------------------------------------------------------------------------
    def _event(self, flight: Flight, type_: EventType, **fields: Any) -> tuple[Flight, Event]:
        ev = Event(seq=flight.next_seq, type=type_, time=server_now(), **fields)
        flight.next_seq += 1
        if ev.terminal:
            flight.finished = True
            self._finished(flight, ev)
        return flight, ev

    def _from_output(self, out: RequestOutput) -> list[tuple[Flight, Event]]:
        flight = self._flights.get(out.request_id)
        if flight is None or flight.finished:
            return []
        outs = out.choices or [out]
        self._metrics.generated_tokens.inc(sum(len(o.new_token_ids) for o in outs))
        flight.prompt_tokens = len(out.prompt_token_ids)
        flight.completion_tokens = sum(len(o.token_ids) for o in outs)
        flight.ttft_s = out.metrics.time_to_first_token_s
        if flight.presenter is None:
            flight.presenter = Presenter(len(outs), None, None, out.prompt_token_ids)
        presenter = flight.presenter
        deltas, reply = presenter.deltas(out), flight.reply
        events = [
            self._event(
                flight,
                EventType.DELTA,
                text=d.text,
                reasoning_text=d.reasoning,
                index=d.index,
                tool_calls=d.tool_calls or None,
                logprobs=d.logprobs or None,
            )
            for d in deltas
        ]
        if reply is not None:
            for d in deltas:
                if d.index == 0:
                    reply.feed(d.text)
        if out.finish_reason in ("stop", "length"):
            self._metrics.latencies(out.metrics.time_to_first_token_s, out.metrics.inter_token_latencies_s)
            done = {
                "finish_reason": presenter.finish_reason(out),
                "usage": presenter.usage(out),
                "choices": presenter.summaries(out),
            }
            if reply is not None:
                reply.end(done)  # DONE comes from the reply once its speech is out
            else:
                events.append(self._event(flight, EventType.DONE, **done))
        elif out.finish_reason == "error":
            if reply is not None:
                reply.stop()
            why = str(out.stop_reason or "")
            if why.startswith(STRUCTURED_OUTPUT_FAILED):  # the request's own grammar failed it
                code, message = ErrorCode.INVALID_ARGUMENT, f"{why} (request {out.request_id})"
            else:
                log.error("request %s: the engine failed while running it: %s", out.request_id, why)
                code = ErrorCode.INTERNAL
                message = f"internal error while generating (request {out.request_id}); see the worker log"
            events.append(self._event(flight, EventType.ERROR, error_code=code, message=message))
        # finish_reason "abort": whoever aborted it queues the terminal event (only it knows why)
        return events

    def _from_control(self, item: Control) -> list[tuple[Flight, Event]]:
        flight = self._flights.get(item.request_id)
        if flight is None or flight.finished:
            return []
        return [self._event(flight, item.type, **item.fields)]

    def _finished(self, flight: Flight, ev: Event) -> None:
        self._metrics.finished(ev.type.value)
        log.info(
            "request %s model=%s outcome=%s%s prompt_tokens=%d completion_tokens=%d queued_s=%.3f "
            "ttft_s=%.3f seconds=%.3f",
            flight.request_id,
            self._model,
            ev.type.value,
            f" finish_reason={ev.finish_reason}" if ev.finish_reason else f" code={ev.error_code}",
            flight.prompt_tokens,
            flight.completion_tokens,
            flight.queued_s,
            flight.ttft_s,
            time.monotonic() - flight.started,
        )
