"""One clock for every process: unix time as the Redis server sees it.

Gateways and workers may run on machines whose clocks disagree, yet they compare each other's times:
heartbeat scores (is that worker alive?), request deadlines, batch windows, event times (TTFT). Each
process therefore reads time as `server_now()`: its own `time.time()` plus an offset to the Redis
server's clock, measured with TIME and corrected by half the round trip. Whoever owns a process's
periodic Redis traffic keeps the offset fresh (the worker's heartbeat, the gateway's health loop) with
`sync` / `async_sync`; until the first sync the offset is 0, i.e. local time, as on one machine.
Scripts that run inside Redis read `redis.call('TIME')` directly.

Durations measured inside one process keep using `time.monotonic()`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

RESYNC_S = 30.0  # the offset drifts by at most clock drift x this


class ServerClock:
    def __init__(self) -> None:
        self.offset = 0.0  # server time - local time, seconds
        self.synced_at: float | None = None  # monotonic time of the last sync
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self.offset

    def due(self) -> bool:
        return self.synced_at is None or time.monotonic() - self.synced_at >= RESYNC_S

    def sync(self, client: Any) -> None:
        """Measure the offset with one TIME round trip on a redis-py client."""
        before = time.time()
        seconds, micros = client.time()
        self._set(seconds + micros / 1e6, before, time.time())

    async def async_sync(self, client: Any) -> None:
        """`sync` on a redis.asyncio client."""
        before = time.time()
        seconds, micros = await client.time()
        self._set(seconds + micros / 1e6, before, time.time())

    def _set(self, server: float, before: float, after: float) -> None:
        with self._lock:
            self.offset = server - (before + after) / 2
            self.synced_at = time.monotonic()


CLOCK = ServerClock()  # the process's clock (one Redis per process)


def server_now() -> float:
    """Unix time on the Redis server's clock, as well as this process knows it."""
    return CLOCK.now()
