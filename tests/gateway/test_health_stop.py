"""`HealthMonitor.stop` ends its refresh loop even when a Redis call swallows the task's cancellation
(redis-py 8.2 does, at times): a gateway's stop hung 30 s on it in a test teardown, and the loop then
ran on after the test, against a Redis that was gone."""

from __future__ import annotations

import asyncio
import time

from gateway.config import GatewayConfig
from gateway.health import HealthMonitor
from gateway.metrics import GatewayMetrics
from gateway.state import ModelState
from pipelines.clock import CLOCK


class SwallowingDispatcher:
    """live_workers answers after 0.2 s and, like redis-py at times, swallows a cancel meanwhile."""

    def __init__(self) -> None:
        self.calls = 0

    async def live_workers(self, model: str) -> ModelState:
        self.calls += 1
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # the cancel is lost here
        return ModelState(model)

    async def queue_depth(self, model: str) -> int:
        return 0


def test_stop_ends_the_refresh_loop_despite_a_swallowed_cancel():
    async def body() -> tuple[int, int]:
        cfg = GatewayConfig(redis_url="redis://unused", models=("m",), health_interval_s=0.05)
        dispatcher = SwallowingDispatcher()
        monitor = HealthMonitor(cfg, dispatcher, GatewayMetrics())
        CLOCK.synced_at = time.monotonic()  # no TIME call: the fake has no Redis
        await monitor.start()
        await asyncio.sleep(0.3)  # a call takes 0.2 s every 0.05 s: one is in flight now
        await asyncio.wait_for(monitor.stop(), timeout=3.0)  # hung for good before the stop flag
        calls = dispatcher.calls
        await asyncio.sleep(0.5)
        return calls, dispatcher.calls

    at_stop, later = asyncio.run(body())
    assert later == at_stop  # nothing refreshed after stop returned
