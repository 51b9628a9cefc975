"""Ending requests early (client cancel, deadline, shutdown) with the KV slot freed within one step.

Why not simply `engine.abort` from the caller's thread: the engine thread releases its lock between
steps and takes it again at once, so another thread waiting for the lock can miss several steps.
So an abort is queued here and carried out by the engine thread itself at the end of the step in
progress (the step hook, `after_step`), and it is also tried directly, for when no step comes (engine
idle, or the request waits for KV room). `engine.abort` succeeds once per request: the attempt that
succeeds queues the terminal event, with the engine step count at that moment in `info`.
A request that is more than one engine request (an image job: thinker prefills, then the image
stage) registers its own abort (`register`): it is called instead of `engine.abort`, with the same
contract (True exactly once, when this call ended it).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.engine import LLMEngine
from pipelines.protocol import ErrorCode, EventType
from workers.emitter import Control, Emitter, Flight


@dataclass(frozen=True, eq=False)  # compared by identity
class _Pending:
    request_id: str
    type: EventType
    fields: dict[str, Any]
    info: dict[str, Any] | None


class Aborter:
    def __init__(self, engine: LLMEngine, emitter: Emitter) -> None:
        self._engine, self._emitter = engine, emitter
        self._pending: deque[_Pending] = deque()
        self._custom: dict[str, Callable[[], bool]] = {}

    def register(self, request_id: str, abort: Callable[[], bool]) -> None:
        """Use `abort()` instead of `engine.abort` for this request (until `unregister`)."""
        self._custom[request_id] = abort

    def unregister(self, request_id: str) -> None:
        self._custom.pop(request_id, None)

    def stop(
        self,
        flight: Flight,
        type_: EventType,
        code: ErrorCode,
        message: str,
        info: dict[str, Any] | None = None,
    ) -> bool:
        """End `flight` with a terminal event of `type_`; False if it is already ending.

        `info` (if given) is copied into the event with "abort_step" added: the engine's step count
        when the abort returned (its KV blocks are free by then).
        """
        fields: dict[str, Any] = {"error_code": code, "message": message}
        with flight.lock:  # orders this against add_request in the task thread
            if flight.stopping:
                return False
            flight.stopping = True
            in_engine = flight.added
        if not in_engine:  # its task thread will not add it now
            if info is not None:
                fields["info"] = {**info, "abort_step": self._engine.metrics.steps}
            self._emitter.put(Control(flight.request_id, type_, fields))
            return True
        pending = _Pending(flight.request_id, type_, fields, info)
        self._pending.append(pending)
        self._abort(pending)
        return True

    def after_step(self) -> None:
        """Engine thread, end of every step, engine lock held: carry out the aborts queued meanwhile."""
        while self._pending:
            try:
                pending = self._pending.popleft()
            except IndexError:
                return
            self._abort(pending)

    def _abort(self, pending: _Pending) -> None:
        custom = self._custom.get(pending.request_id)
        ended = custom() if custom is not None else self._engine.abort(pending.request_id)
        if not ended:
            return  # done by the other attempt, or it finished on its own (its DONE is queued)
        fields = dict(pending.fields)
        if pending.info is not None:
            fields["info"] = {**pending.info, "abort_step": self._engine.metrics.steps}
        self._emitter.put(Control(pending.request_id, pending.type, fields))
        with contextlib.suppress(ValueError):  # the engine thread popped it already
            self._pending.remove(pending)
