"""Times compared across machines use Redis's clock (pipelines.clock): a process whose own clock is
two minutes off still reads heartbeats and deadlines right once its offset is synced (real Redis)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher
from pipelines.clock import CLOCK, ServerClock, server_now
from pipelines.protocol import workers_key

SKEW_S = 120.0


@pytest.fixture()
def skewed_clock(monkeypatch):
    """This process's time.time() runs SKEW_S ahead of the Redis server's; CLOCK restored after."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + SKEW_S)
    saved = CLOCK.offset, CLOCK.synced_at
    yield
    CLOCK.offset, CLOCK.synced_at = saved


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def test_sync_measures_the_offset_to_the_servers_clock(redis_url, skewed_clock):
    client = redis.Redis.from_url(redis_url)
    clock = ServerClock()
    assert clock.due() and abs(clock.now() - redis_now(client) - SKEW_S) < 1.0  # unsynced: local time
    clock.sync(client)
    assert not clock.due()
    assert abs(clock.now() - redis_now(client)) < 0.5
    assert abs(clock.offset + SKEW_S) < 0.5


def test_a_skewed_gateway_sees_a_beating_worker_as_alive(redis_url, skewed_clock, model):
    client = redis.Redis.from_url(redis_url)
    client.zadd(workers_key(model), {"w1": redis_now(client)})  # a worker beating on the server's clock

    async def check() -> tuple[str | None, str | None]:
        dispatcher = Dispatcher(GatewayConfig(redis_url=redis_url, models=(model,)))
        try:
            CLOCK.offset, CLOCK.synced_at = 0.0, None
            before = await dispatcher._liveness_problem(model, "w1")  # local time: 120 s "late"
            await CLOCK.async_sync(dispatcher.redis)
            after = await dispatcher._liveness_problem(model, "w1")
            return before, after
        finally:
            await dispatcher.close()

    before, after = asyncio.run(check())
    assert before is not None and "no heartbeat" in before  # what comparing local clocks got wrong
    assert after is None
    assert abs(server_now() - redis_now(client)) < 0.5
