"""FileStore: the files of the OpenAI files API (`/v1/files`), kept in Redis so any gateway serves any.

A file is one hash, `bailing:files:<id>` (its bytes, filename, purpose, size, creation time, owner),
listed newest first in `bailing:files` (and, with bearer tokens, in its owner's own index). With
`expires_after` the hash expires on its own; listing drops the ids whose hash is gone. A batch's
output and error files are not stored: `gateway.http_api.batch_files` renders them from the batch's
results; the store keeps only which input file and endpoint a batch was created from (`BatchLink`).

Synchronous (redis-py); the routes call it in a thread.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

FILES_KEY = "bailing:files"
LINKS_KEY = "bailing:openai-batches"  # :<batch id> -> its BatchLink (JSON)


def file_key(file_id: str) -> str:
    return f"{FILES_KEY}:{file_id}"


def owner_files_key(owner: str) -> str:
    return f"{FILES_KEY}:owner:{owner}"


@dataclasses.dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None = None
    owner: str = ""

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclasses.dataclass(frozen=True)
class BatchLink:
    """What an OpenAI batch was made from, which our batch record does not hold."""

    endpoint: str
    input_file_id: str
    completion_window: str


class FileStore:
    def __init__(self, client: Any) -> None:
        self.redis = client

    def add(
        self, filename: str, purpose: str, data: bytes, owner: str, ttl_s: int | None = None
    ) -> StoredFile:
        at = time.time()  # the index's score: newest first, to the microsecond
        now = int(at)
        f = StoredFile(
            id="file-" + uuid.uuid4().hex,
            filename=filename,
            purpose=purpose,
            bytes=len(data),
            created_at=now,
            expires_at=now + ttl_s if ttl_s else None,
            owner=owner,
        )
        meta = dataclasses.asdict(f) | {"expires_at": f.expires_at or 0}
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(file_key(f.id), mapping={**meta, "data": data})
            if ttl_s:
                pipe.expire(file_key(f.id), ttl_s)
            pipe.zadd(FILES_KEY, {f.id: at})
            if owner:
                pipe.zadd(owner_files_key(owner), {f.id: at})
            pipe.execute()
        return f

    def get(self, file_id: str) -> StoredFile | None:
        fields = ("id", "filename", "purpose", "bytes", "created_at", "expires_at", "owner")
        raw = self.redis.hmget(file_key(file_id), fields)
        if raw[0] is None:
            return None
        h = dict(zip(fields, (v.decode() for v in raw), strict=True))
        expires = int(h["expires_at"])
        return StoredFile(
            h["id"],
            h["filename"],
            h["purpose"],
            int(h["bytes"]),
            int(h["created_at"]),
            expires or None,
            h["owner"],
        )

    def content(self, file_id: str) -> bytes | None:
        return self.redis.hget(file_key(file_id), "data")

    def delete(self, f: StoredFile) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(file_key(f.id))
            pipe.zrem(FILES_KEY, f.id)
            if f.owner:
                pipe.zrem(owner_files_key(f.owner), f.id)
            pipe.execute()

    def list(self, owner: str | None, limit: int, purpose: str | None, after: str | None) -> list[StoredFile]:
        """Newest first, `owner`'s only if given, starting after the id `after`; ids whose file expired
        are dropped from the index as they are met."""
        index = FILES_KEY if owner is None else owner_files_key(owner)
        start = 0
        if after:
            rank = self.redis.zrevrank(index, after)
            start = 0 if rank is None else rank + 1
        out: list[StoredFile] = []
        while len(out) < limit:
            ids = [i.decode() for i in self.redis.zrevrange(index, start, start + limit - 1)]
            if not ids:
                break
            start += len(ids)
            for file_id in ids:
                f = self.get(file_id)
                if f is None:
                    self.redis.zrem(index, file_id)
                    start -= 1
                elif purpose is None or f.purpose == purpose:
                    out.append(f)
        return out[:limit]

    # ---- batches' links ----------------------------------------------------------------------
    def link_batch(self, batch_id: str, link: BatchLink, ttl_s: int) -> None:
        """Keep `link` for `ttl_s` (the batch's completion window plus how long its results are kept)."""
        self.redis.set(f"{LINKS_KEY}:{batch_id}", json.dumps(dataclasses.asdict(link)), ex=ttl_s)

    def batch_link(self, batch_id: str) -> BatchLink | None:
        raw = self.redis.get(f"{LINKS_KEY}:{batch_id}")
        return None if raw is None else BatchLink(**json.loads(raw))
