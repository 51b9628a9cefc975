"""Side loops on the engine's thread (`engine.side_loops`): a due loop is ticked on the engine thread
between the engine's own steps, while text requests keep streaming; an idle loop with work in hand is
looked at within its delay; `wake()` starts a round at once; a loop's failure never stops the engine;
a detached loop is never ticked again."""

from __future__ import annotations

import threading
import time

import pytest

from engine import SamplingParams
from engine.engine import LLMEngine


class CountingLoop:
    """Due while it has `due` rounds left; after that, idle with a look-again delay (or None)."""

    def __init__(self, due: int = 0, idle_delay: float | None = None, fail_every: int = 0) -> None:
        self.due, self.idle_delay, self.fail_every = due, idle_delay, fail_every
        self.ticks, self.threads = 0, set()
        self.lock = threading.Lock()

    def delay(self) -> float | None:
        with self.lock:
            return 0.0 if self.due > 0 else self.idle_delay

    def tick(self) -> None:
        with self.lock:
            self.ticks += 1
            self.threads.add(threading.current_thread().name)
            self.due = max(0, self.due - 1)
            if self.fail_every and self.ticks % self.fail_every == 0:
                raise RuntimeError("a side loop failed")

    def give(self, rounds: int, engine: LLMEngine) -> None:
        with self.lock:
            self.due += rounds
        engine.wake()  # outside our lock: the engine asks `delay` with its own lock held


@pytest.fixture()
def engine(golden_copy):
    engine = LLMEngine(golden_copy)
    engine.start()
    yield engine
    engine.shutdown()


def until(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_due_loop_runs_on_the_engine_thread_beside_text_requests(engine):
    loop = CountingLoop()
    engine.side_loops.attach(loop)
    loop.give(50, engine)
    chunks = list(engine.stream([5, 6, 7], SamplingParams(max_tokens=8, ignore_eos=True)))
    assert chunks[-1].finished and len(chunks[-1].token_ids) == 8
    assert until(lambda: loop.ticks == 50) and loop.threads == {"bailing-engine"}
    time.sleep(0.1)
    assert loop.ticks == 50  # no work, no delay: never ticked again


def test_an_idle_loop_with_work_in_hand_is_looked_at_within_its_delay(engine):
    loop = CountingLoop(idle_delay=0.02)
    engine.side_loops.attach(loop)
    engine.wake()
    time.sleep(0.5)
    assert 5 <= loop.ticks <= 40  # about every 20 ms, not a busy loop


def test_a_failing_loop_never_stops_the_engine(engine):
    loop = CountingLoop(fail_every=2)
    engine.side_loops.attach(loop)
    loop.give(10, engine)
    assert until(lambda: loop.ticks == 10)
    out = list(engine.stream([5, 6, 7], SamplingParams(max_tokens=4, ignore_eos=True)))[-1]
    assert out.finished and len(out.token_ids) == 4


def test_a_detached_loop_is_not_ticked(engine):
    loop = CountingLoop()
    engine.side_loops.attach(loop)
    engine.side_loops.detach(loop)
    loop.give(5, engine)
    time.sleep(0.2)
    assert loop.ticks == 0
