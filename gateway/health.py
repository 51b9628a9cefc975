"""Readiness from Redis: per-model worker liveness -> grpc.health.v1 statuses, gauges and a cache.

A background task refreshes every `health_interval_s`: service "<model>" is SERVING while the model
has a live worker, "bailing.v1.Inference" while any model has one, "" while every model has one.
While draining, everything is NOT_SERVING for good.
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

from gateway.api import INFERENCE_SERVICE
from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher
from gateway.metrics import GatewayMetrics
from gateway.state import ModelState
from pipelines.clock import CLOCK

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STOP_WAIT_S = 5.0


class HealthMonitor:
    def __init__(self, cfg: GatewayConfig, dispatcher: Dispatcher, metrics: GatewayMetrics) -> None:
        self.cfg = cfg
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.servicer = health.aio.HealthServicer()
        self.states: dict[str, ModelState] = {m: ModelState(m) for m in cfg.models}
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._redis_ok = True

    def service_names(self) -> list[str]:
        return [health.OVERALL_HEALTH, INFERENCE_SERVICE, *self.cfg.models]

    async def start(self) -> None:
        for name in self.service_names():
            await self.servicer.set(name, NOT_SERVING)
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="health-refresh")

    async def refresh(self) -> None:
        try:
            if CLOCK.due():  # this process's offset to Redis's clock (pipelines.clock)
                await CLOCK.async_sync(self.dispatcher.redis)
            states = {m: await self.dispatcher.live_workers(m) for m in self.cfg.models}
            depths = {m: await self.dispatcher.queue_depth(m) for m in self.cfg.models}
        except Exception as exc:  # Redis down: nothing is servable until it is back
            if self._redis_ok:
                log.error("health refresh failed: %s", exc)
            self._redis_ok = False
            states, depths = {m: ModelState(m) for m in self.cfg.models}, {}
        else:
            if not self._redis_ok:
                log.info("health refresh: Redis reachable again")
            self._redis_ok = True
        self.states = states
        for model, state in states.items():
            self.metrics.live_workers.labels(model).set(state.live)
            if model in depths:
                self.metrics.queue_depth.labels(model).set(depths[model])
            await self.servicer.set(model, SERVING if state.live else NOT_SERVING)
        live = [s.live > 0 for s in states.values()]
        await self.servicer.set(INFERENCE_SERVICE, SERVING if any(live) else NOT_SERVING)
        await self.servicer.set(health.OVERALL_HEALTH, SERVING if all(live) else NOT_SERVING)

    async def _loop(self) -> None:
        # the flag, not only the task's cancel, ends it: redis-py can swallow a cancellation that lands
        # inside a command, and the loop then ran on past stop() (a test's teardown hung on it)
        while not self._stopping.is_set():
            await asyncio.sleep(self.cfg.health_interval_s)
            if not self._stopping.is_set():
                await self.refresh()

    async def drain(self) -> None:
        """NOT_SERVING everywhere, and no refresh may flip it back."""
        await self.servicer.enter_graceful_shutdown()

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            # a swallowed cancel: the loop sees the flag after its current refresh
            await asyncio.wait({self._task}, timeout=STOP_WAIT_S)
