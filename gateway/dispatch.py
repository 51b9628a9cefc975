"""Everything the gateway does with Redis and Celery: workers, task dispatch, event streams, cancels.

Flow: `live_workers(model)` reads the heartbeat ZSET + WorkerInfo -> `submit(job, blobs)` stores media
and sends the Celery task (task id = request id) -> `events(rid, model)` XREADs the request's stream
until its terminal event, checking meanwhile that the worker (or, before one started, any worker)
is alive and writing a terminal ERROR itself when not -> `cancel(rid)` sets the flag and publishes.
`take_image(key)` fetches (and deletes) a generated image a worker parked under `image_key`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from celery import Celery
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as KombuRedisChannel

from gateway.config import GatewayConfig
from gateway.media import MediaBlob, store_media
from gateway.state import ModelState
from pipelines.protocol import (
    CANCEL_CHANNEL,
    IMAGE_STAGE,
    STREAM_TTL_S,
    TASK_GENERATE,
    ErrorCode,
    Event,
    EventType,
    GenerateJob,
    WorkerInfo,
    cancel_key,
    queue_name,
    stage_workers_key,
    stream_key,
    worker_info_key,
    workers_key,
)

log = logging.getLogger(__name__)

BLOCK_MS = 500  # one XREAD waits this long at most, so liveness is checked between reads
LIVENESS_EVERY_S = 0.5
_SEQ0 = '{"seq":0,'

# Append a terminal event unless the stream already ends with one (first terminal wins). ARGV[1]
# is the event's JSON after its "seq" field; the script numbers it after the stream's last event.
_FAIL_LUA = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seq = 0
if #last > 0 then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then
      local ev = cjson.decode(fields[i + 1])
      local t = ev['type']
      if t == 'done' or t == 'error' or t == 'cancelled' then return 0 end
      seq = (tonumber(ev['seq']) or 0) + 1
    end
  end
end
redis.call('XADD', KEYS[1], '*', 'e', '{"seq":' .. seq .. ',' .. ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def celery_priority(priority: int) -> int:
    """The request's priority (lower first) clamped to the Redis transport's 0 (first) .. 9 range."""
    return min(max(priority, 0), 9)


def kombu_queue_keys(model: str) -> list[str]:
    """The Redis lists kombu's Redis transport keeps a queue in: one per priority step."""
    q = queue_name(model)
    return [q if p == 0 else f"{q}{KombuRedisChannel.sep}{p}" for p in PRIORITY_STEPS]


def _producer(redis_url: str) -> Celery:
    app = Celery("bailing-gateway", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
    )
    return app


def _entries(resp) -> list[tuple[bytes, dict]]:
    """XREAD's entries for one stream, whether the reply came as RESP2 (list) or RESP3 (dict)."""
    if not resp:
        return []
    groups = resp.values() if isinstance(resp, dict) else (entries for _, entries in resp)
    return [(entry[0], entry[1]) for entries in groups for entry in entries]


ADMISSION_CACHE_S = 0.25


class Dispatcher:
    """One per gateway process; all methods are coroutines except `close`'s sync part."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        # Every streaming call holds a connection in XREAD BLOCK: room for all admitted calls plus
        # the gateway's own traffic (redis-py's asyncio pool stops at 100 connections by default).
        self.redis = aioredis.Redis.from_url(cfg.redis_url, max_connections=cfg.max_inflight + 64)
        self._celery = _producer(cfg.redis_url)
        self._fail_script = self.redis.register_script(_FAIL_LUA)
        self._live: dict[str, tuple[float, ModelState]] = {}  # model -> (monotonic time, live state)

    async def warm_up(self, connections: int) -> None:
        """Open `connections` pooled Redis connections now, not in the first burst of requests.

        Every waiting stream holds a connection for its XREAD; opening one costs a few round trips
        and ~2 ms of Python, which a burst of new streams would otherwise pay inside the event loop.
        """
        await asyncio.gather(*(self.redis.ping() for _ in range(connections)))

    async def close(self) -> None:
        await self.redis.aclose()
        self._celery.close()

    # ---- workers --------------------------------------------------------------------------
    async def admission_state(self, model: str) -> ModelState:
        """`live_workers`, reusing a state with live workers read in the last ADMISSION_CACHE_S.

        Admission runs per request; a burst would otherwise queue two Redis round trips each. Only
        a state with live workers is reused, so a model that just got its first worker is seen at
        once; one that just lost its last is caught by the stream's own liveness checks.
        """
        cached = self._live.get(model)
        if cached is not None and time.monotonic() - cached[0] < ADMISSION_CACHE_S:
            return cached[1]
        return await self.live_workers(model)

    async def live_workers(self, model: str) -> ModelState:
        """The workers of `model` whose heartbeat is fresher than worker_dead_after_s."""
        since = time.time() - self.cfg.worker_dead_after_s
        ids = await self.redis.zrangebyscore(workers_key(model), since, "+inf")
        if not ids:
            return ModelState(model)
        raws = await self.redis.mget([worker_info_key(i.decode()) for i in ids])
        infos = []
        for wid, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue  # heartbeat without a description yet: not usable
            try:
                infos.append(WorkerInfo.from_json(raw))
            except (ValueError, TypeError) as exc:
                log.warning("worker %s has unreadable info: %s", wid.decode(), exc)
        state = ModelState(model, tuple(infos))
        if state.live:
            self._live[model] = (time.monotonic(), state)
        return state

    async def queue_depth(self, model: str) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in kombu_queue_keys(model):
                pipe.llen(key)
            return sum(await pipe.execute())

    # ---- requests -------------------------------------------------------------------------
    async def stream_exists(self, request_id: str) -> bool:
        return bool(await self.redis.exists(stream_key(request_id)))

    async def submit(self, job: GenerateJob, blobs: list[MediaBlob]) -> None:
        """Store the job's media, then send its Celery task (kombu's client blocks: run in a thread)."""
        if blobs:
            await store_media(self.redis, blobs, self.cfg.media_ttl_s)
        await asyncio.to_thread(self._send, job)

    def _send(self, job: GenerateJob) -> None:
        self._celery.send_task(
            TASK_GENERATE,
            args=[job.to_dict()],
            task_id=job.request_id,
            queue=queue_name(job.model),
            priority=celery_priority(job.priority),
        )

    async def take_image(self, key: str) -> bytes | None:
        """A generated image's bytes (None if the key is gone), deleted in the same round trip so
        they do not linger for IMAGE_TTL_S (GET + DEL rather than GETDEL: any Redis version)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.delete(key)
            data, _ = await pipe.execute()
        return data

    async def cancel(self, request_id: str) -> None:
        """Ask the worker (now or when it picks the task up) to drop the request."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(cancel_key(request_id), "1", ex=STREAM_TTL_S)
            pipe.publish(CANCEL_CHANNEL, request_id)
            await pipe.execute()

    async def fail(self, request_id: str, code: ErrorCode, message: str) -> bool:
        """Append a terminal ERROR unless the stream already has a terminal; True if it was written."""
        body = Event(seq=0, type=EventType.ERROR, error_code=code, message=message, time=time.time())
        encoded = body.encode()["e"]
        assert encoded.startswith(_SEQ0), encoded
        written = await self._fail_script(
            keys=[stream_key(request_id)], args=[encoded[len(_SEQ0) :], STREAM_TTL_S]
        )
        return bool(written)

    async def events(
        self, request_id: str, model: str, call_done: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[Event]:
        """The request's events in order, ending with its terminal one (never hangs on a dead worker).

        Also ends, without a terminal event, once `call_done()` says the RPC is over.
        """
        key, last_id, worker_id, last_seq = stream_key(request_id), "0-0", "", -1
        registry = workers_key(model)  # where the worker that runs it heartbeats
        next_check = time.monotonic() + LIVENESS_EVERY_S
        while not call_done():
            resp = await self.redis.xread({key: last_id}, count=256, block=BLOCK_MS)
            for entry_id, fields in _entries(resp):
                last_id = entry_id
                event = Event.decode(fields)
                if event.seq <= last_seq:
                    continue  # a duplicate (e.g. from a redelivered task): already relayed
                last_seq = event.seq
                if event.type is EventType.STARTED:
                    worker_id = event.worker_id
                    if (event.info or {}).get("stage") == IMAGE_STAGE:  # a diffusion-stage worker took over
                        registry = stage_workers_key(model)
                yield event
                if event.terminal:
                    return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + LIVENESS_EVERY_S
                problem = await self._liveness_problem(model, worker_id, registry)
                if problem:
                    log.warning("request %s: %s", request_id, problem)
                    await self.fail(request_id, ErrorCode.UNAVAILABLE, problem)
                    # the next XREAD returns the first terminal: ours, or the worker's if it won

    async def _liveness_problem(self, model: str, worker_id: str, registry: str | None = None) -> str | None:
        now = time.time()
        dead_after = self.cfg.worker_dead_after_s
        if worker_id:
            score = await self.redis.zscore(registry or workers_key(model), worker_id)
            if score is None:
                return f"worker {worker_id} stopped (it left the registry of model {model!r})"
            if now - score > dead_after:
                return f"worker {worker_id} stopped (no heartbeat for {now - score:.1f} s)"
            return None
        if await self.redis.zcount(workers_key(model), now - dead_after, "+inf") == 0:
            return f"no live worker serves model {model!r} any more"
        return None
