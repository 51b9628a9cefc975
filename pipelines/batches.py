"""Batch jobs' durable state in Redis, shared by the gateway (create, get, list, cancel, results) and
the workers (claim an item, write its result). Torch-free; every multi-key change is one Lua script.

Keys per batch: `bailing:batch:{id}` HASH (the record: status, counts, times, usage, metadata JSON),
`:ids` LIST (custom ids in input order), `:results` HASH index -> result JSON (written once:
HSETNX, so a redelivered item can never duplicate or overwrite a result), `:running` HASH index ->
worker id (claimed items). `bailing:batches` ZSET lists batch ids by creation time, and
`bailing:batches:owner:{owner}` those of one owner (a batch created with a bearer token records the
token's owner id, a hash: never the token). Items travel as Celery tasks `TASK_BATCH_ITEM` on
`batch_queue_name(model)`; payload = `BatchItemJob.to_dict()`.

Status: validating -> queued -> running (first item claimed) -> completed | cancelled | expired
once every item has a result (cancelling / expiring while a stop waits for running items). Cancel and expiry
write a CANCELLED / DEADLINE_EXCEEDED result for every item neither finished nor running.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from pipelines.clock import server_now
from pipelines.protocol import GenerateJob, Usage

TASK_BATCH_ITEM = "bailing.batch_item"
BATCHES_KEY = "bailing:batches"
RESULT_TTL_S = 7 * 24 * 3600  # finished batches and their results are kept this long by default


def batch_queue_name(model: str) -> str:
    return f"bailing.{model}.batch"


def batch_key(batch_id: str) -> str:
    return f"bailing:batch:{batch_id}"


def owner_batches_key(owner: str) -> str:
    return f"{BATCHES_KEY}:owner:{owner}"


def _keys(batch_id: str) -> list[str]:
    base = batch_key(batch_id)
    return [base, f"{base}:ids", f"{base}:results", f"{base}:running"]


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRING = "expiring"  # the window passed; items still running finish, then expired
    EXPIRED = "expired"


TERMINAL_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED}
)


@dataclass(frozen=True)
class BatchRecord:
    id: str
    model: str
    status: BatchStatus
    total: int
    completed: int = 0
    failed: int = 0
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    expires_at: float = 0.0  # 0 = no completion window
    metadata: dict[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    owner: str = ""  # owner id of the bearer token that created it (gateway/tokens.py); "" = none

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> BatchRecord:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        usage = Usage(**{f: int(h.get(f"usage_{f}", 0)) for f in Usage.__dataclass_fields__})
        return cls(
            id=h["id"],
            model=h["model"],
            status=BatchStatus(h["status"]),
            total=int(h["total"]),
            completed=int(h.get("completed", 0)),
            failed=int(h.get("failed", 0)),
            created_at=float(h.get("created_at", 0)),
            started_at=float(h.get("started_at", 0)),
            finished_at=float(h.get("finished_at", 0)),
            expires_at=float(h.get("expires_at", 0)),
            metadata=json.loads(h.get("metadata", "{}")),
            usage=usage,
            owner=h.get("owner", ""),
        )


@dataclass(frozen=True)
class BatchItemJob:
    """The Celery payload of one item: which batch and position, and the request to run."""

    batch_id: str
    index: int
    custom_id: str
    job: GenerateJob
    attempt: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "job": self.job.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchItemJob:
        data = dict(data)
        data["job"] = GenerateJob.from_dict(data["job"])
        return cls(**data)


@dataclass(frozen=True)
class ItemResult:
    """One item's outcome: `response` (GenerateResponse-shaped dict), `image_response` (an image item's
    GenerateImageResponse-shaped dict, protobuf JSON names, image bytes base64), `speech_response` (a
    speech item's SynthesizeSpeechResponse-shaped dict, the clip base64) or `error` {"code", "message"}."""

    index: int
    custom_id: str
    response: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    image_response: dict[str, Any] | None = None
    speech_response: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> ItemResult:
        return cls(**json.loads(raw))


# ---- Lua: every state change that touches several fields is atomic ----------------------------
# KEYS: batch, ids, results, running. ARGV: index, result JSON, ok (1|0), now, ttl, usage x5
_WRITE_RESULT = """
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HDEL', KEYS[4], ARGV[1])
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'completed', 1)
  redis.call('HINCRBY', KEYS[1], 'usage_prompt_tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'usage_completion_tokens', ARGV[7])
  redis.call('HINCRBY', KEYS[1], 'usage_reasoning_tokens', ARGV[8])
  redis.call('HINCRBY', KEYS[1], 'usage_cached_prompt_tokens', ARGV[9])
  redis.call('HINCRBY', KEYS[1], 'usage_forwards', ARGV[10])
else
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
end
local done = tonumber(redis.call('HGET', KEYS[1], 'completed') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'failed') or '0')
if done >= tonumber(redis.call('HGET', KEYS[1], 'total')) then
  local status = redis.call('HGET', KEYS[1], 'status')
  local final = 'completed'
  if status == 'cancelling' or status == 'cancelled' then final = 'cancelled'
  elseif status == 'expiring' or status == 'expired' then final = 'expired' end
  redis.call('HSET', KEYS[1], 'status', final, 'finished_at', ARGV[4])
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
end
return 1
"""

# KEYS: batch, ids, results, running, live workers (ZSET id -> last heartbeat).
# ARGV: index, worker id, now, dead-after seconds. -> 'run' | 'skip' | 'expired' | 'busy'
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 'skip' end
if status == 'cancelling' or status == 'cancelled' or status == 'expiring' or status == 'expired' then
  return 'skip'
end
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0')
if expires > 0 and tonumber(ARGV[3]) >= expires then return 'expired' end
local holder = redis.call('HGET', KEYS[4], ARGV[1])
if holder and holder ~= ARGV[2] then
  local beat = redis.call('ZSCORE', KEYS[5], holder)
  if beat and tonumber(beat) > tonumber(ARGV[3]) - tonumber(ARGV[4]) then return 'busy' end
end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
if status == 'queued' then redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3]) end
return 'run'
"""

# KEYS: batch, ids, results, running. ARGV: new status (cancelling|expiring), code, message, now, ttl
# Ends every item that has neither a result nor a claim; returns how many it ended.
_STOP = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled'
  or status == 'expired' then return -1 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
local ended = 0
for i, custom_id in ipairs(ids) do
  local idx = tostring(i - 1)
  if redis.call('HEXISTS', KEYS[3], idx) == 0 and redis.call('HEXISTS', KEYS[4], idx) == 0 then
    local result = cjson.encode({index = i - 1, custom_id = custom_id,
      error = {code = ARGV[2], message = ARGV[3]}})
    redis.call('HSET', KEYS[3], idx, result)
    ended = ended + 1
  end
end
redis.call('HINCRBY', KEYS[1], 'failed', ended)
local done = tonumber(redis.call('HGET', KEYS[1], 'completed') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'failed') or '0')
if done >= tonumber(redis.call('HGET', KEYS[1], 'total')) then
  local final = 'cancelled'
  if ARGV[1] == 'expiring' then final = 'expired' end
  redis.call('HSET', KEYS[1], 'status', final, 'finished_at', ARGV[4])
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
end
return ended
"""


class BatchStore:
    """Batch state on a synchronous redis-py client (the gateway runs it in a thread)."""

    def __init__(self, client: Any, result_ttl_s: int = RESULT_TTL_S) -> None:
        self.redis, self.result_ttl_s = client, result_ttl_s
        self._write = client.register_script(_WRITE_RESULT)
        self._claim = client.register_script(_CLAIM)
        self._stop = client.register_script(_STOP)

    def create(self, record: BatchRecord, custom_ids: list[str]) -> None:
        """Store a new batch (status as in `record`) with its custom ids in input order."""
        fields = {
            "id": record.id,
            "model": record.model,
            "status": record.status.value,
            "total": record.total,
            "completed": 0,
            "failed": 0,
            "created_at": record.created_at,
            "started_at": 0,
            "finished_at": 0,
            "expires_at": record.expires_at,
            "metadata": json.dumps(record.metadata),
            "owner": record.owner,
        }
        base, ids, *_ = _keys(record.id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(base, mapping=fields)
        if custom_ids:
            pipe.rpush(ids, *custom_ids)
        pipe.zadd(BATCHES_KEY, {record.id: record.created_at})
        if record.owner:
            pipe.zadd(owner_batches_key(record.owner), {record.id: record.created_at})
        pipe.execute()

    def set_status(self, batch_id: str, status: BatchStatus) -> None:
        self.redis.hset(batch_key(batch_id), "status", status.value)

    def get(self, batch_id: str) -> BatchRecord | None:
        raw = self.redis.hgetall(batch_key(batch_id))
        return BatchRecord.from_hash(raw) if raw else None

    def list(self, limit: int = 100, owner: str | None = None) -> list[BatchRecord]:
        """Newest first (only `owner`'s batches, if given); ids whose batch expired from Redis are
        dropped from the index."""
        index = BATCHES_KEY if owner is None else owner_batches_key(owner)
        ids = [i.decode() for i in self.redis.zrevrange(index, 0, limit - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hgetall(batch_key(batch_id))
        records, gone = [], []
        for batch_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                records.append(BatchRecord.from_hash(raw))
            else:
                gone.append(batch_id)
        if gone:
            self.redis.zrem(index, *gone)
        return records

    def claim(self, batch_id: str, index: int, worker_id: str, workers: str, dead_after_s: float) -> str:
        """'run' (claimed: go), 'skip' (done, cancelled or gone), 'expired' (window passed) or 'busy'
        (another worker that still heartbeats in the `workers` ZSET holds the claim: a duplicate
        delivery, e.g. the visibility timeout passed while it runs; look again later)."""
        keys = [*_keys(batch_id), workers]
        out = self._claim(keys=keys, args=[index, worker_id, server_now(), dead_after_s])
        return out.decode() if isinstance(out, bytes) else out

    def release(self, batch_id: str, index: int) -> None:
        """Drop a claim without a result (the item will be retried)."""
        self.redis.hdel(_keys(batch_id)[3], index)

    def write_result(self, batch_id: str, result: ItemResult, usage: Usage | None = None) -> bool:
        """Record an item's outcome once; False if it already had one (a redelivery)."""
        u = usage or Usage()
        args = [
            result.index,
            result.to_json(),
            "1" if result.error is None else "0",
            server_now(),
            self.result_ttl_s,
            u.prompt_tokens,
            u.completion_tokens,
            u.reasoning_tokens,
            u.cached_prompt_tokens,
            u.forwards,
        ]
        return bool(self._write(keys=_keys(batch_id), args=args))

    def stop(self, batch_id: str, expire: bool = False) -> int:
        """Cancel (or expire) the batch: every item not finished nor running ends now; -1 if it was over."""
        status, code, message = (
            ("expiring", "DEADLINE_EXCEEDED", "the batch's completion window passed")
            if expire
            else ("cancelling", "CANCELLED", "the batch was cancelled")
        )
        args = [status, code, message, server_now(), self.result_ttl_s]
        return int(self._stop(keys=_keys(batch_id), args=args))

    def expire_if_due(self, record: BatchRecord) -> BatchRecord:
        """Expire a batch whose completion window has passed (lazily, when someone looks at it)."""
        if record.finished or not record.expires_at or server_now() < record.expires_at:
            return record
        self.stop(record.id, expire=True)
        return self.get(record.id) or record

    def results(self, batch_id: str, start: int, count: int) -> list[ItemResult]:
        """Results of items start..start+count-1 that have one, in input order."""
        idx = list(range(start, start + count))
        if not idx:
            return []
        raw = self.redis.hmget(_keys(batch_id)[2], idx)
        return [ItemResult.from_json(r) for r in raw if r is not None]
