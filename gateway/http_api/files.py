"""The files and batches endpoints, over the FileStore (uploads, in Redis) and the JobsServicer.

`POST /v1/files` (multipart: `file`, `purpose` batch, optional `expires_after[anchor]` created_at +
`expires_after[seconds]`), `GET /v1/files` (`limit`, `after`, `purpose`), `GET|DELETE /v1/files/{id}`,
`GET /v1/files/{id}/content`. `POST /v1/batches` (`input_file_id`, `endpoint`, `completion_window`,
`metadata`), `GET /v1/batches` (`limit`, `after`), `GET /v1/batches/{id}`, `POST
/v1/batches/{id}/cancel`. A finished batch's `output_file_id` / `error_file_id` name files rendered
from its results as they are read (`batch_files`), so they live as long as the results do and cannot
be deleted. With bearer tokens, files and batches belong to the token that made them: another
token gets 404 for them, as for an unknown id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.api import pb
from gateway.http_api.batch_files import (
    batch_object,
    batch_of_file,
    batch_request,
    check_endpoint,
    output_file_id,
    result_line,
    window_s,
)
from gateway.http_api.calls import HttpCalls, number_field, text_field, upload
from gateway.http_api.context import CallAborted, HttpCallContext
from gateway.http_api.errors import HttpError, bad_request, from_status
from gateway.http_api.fields import Fields
from gateway.http_api.file_store import BatchLink, FileStore, StoredFile
from pipelines.batches import RESULT_TTL_S

PURPOSES = ("batch",)
MAX_LIST = 10_000


class FileRoutes:
    def __init__(self, calls: HttpCalls, jobs: Any) -> None:
        self.calls, self.jobs = calls, jobs
        self.store = FileStore(jobs.redis)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.upload, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.retrieve_file, methods=["GET"]),
            Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.retrieve_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
        ]

    # ---- files --------------------------------------------------------------------------------
    async def upload(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        form = await self.calls.form(request)
        purpose = text_field(form, "purpose")
        if purpose not in PURPOSES:
            raise bad_request(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r:.40}", "purpose")
        anchor = text_field(form, "expires_after[anchor]")
        ttl = number_field(form, "expires_after[seconds]", int)
        if anchor not in (None, "created_at") or (ttl is not None and not 3600 <= ttl <= 30 * 86400):
            raise bad_request(
                "expires_after needs anchor created_at and seconds in 3600..2592000", "expires_after"
            )
        file = await upload(form, "file")
        owner = self._owner(ctx)
        stored = await asyncio.to_thread(
            self.store.add, file.filename or "upload.jsonl", purpose, file.data, owner, ttl
        )
        return JSONResponse(stored.to_openai())

    async def list_files(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        limit = _limit(request, default=MAX_LIST)
        purpose, after = request.query_params.get("purpose"), request.query_params.get("after")
        files = await asyncio.to_thread(self.store.list, self._owner(ctx) or None, limit + 1, purpose, after)
        return JSONResponse(_page([f.to_openai() for f in files], limit))

    async def retrieve_file(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        file_id = request.path_params["file_id"]
        if batch_of_file(file_id) is not None:
            size = 0
            async for line in self._result_lines(ctx, file_id):
                size += len(line)
            return JSONResponse(self._output_file(file_id, size))
        return JSONResponse((await self._file(ctx, file_id)).to_openai())

    async def delete_file(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        file_id = request.path_params["file_id"]
        if batch_of_file(file_id) is not None:
            raise bad_request(
                "a batch's output and error files cannot be deleted: they expire with its results"
            )
        stored = await self._file(ctx, file_id)
        await asyncio.to_thread(self.store.delete, stored)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def file_content(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        file_id = request.path_params["file_id"]
        if batch_of_file(file_id) is None:
            stored = await self._file(ctx, file_id)
            data = await asyncio.to_thread(self.store.content, stored.id)
            return Response(data or b"", media_type="application/octet-stream")
        lines = self._result_lines(ctx, file_id)
        first = await self.calls.unary(request, ctx, _next(lines), end=False)
        return StreamingResponse(_with_first(first, lines), media_type="application/jsonl")

    # ---- batches ------------------------------------------------------------------------------
    async def create_batch(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        f = Fields(await self.calls.json(request))
        input_file_id, endpoint = f.require("input_file_id", str), f.require("endpoint", str)
        window = f.get("completion_window", str, default="24h")
        metadata = f.get("metadata", dict, default={})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise bad_request("metadata must map strings to strings", "metadata")
        check_endpoint(endpoint)
        window_seconds = window_s(window)  # both refused before the file is read
        stored = await self._file(ctx, input_file_id)
        if stored.purpose != "batch":
            raise bad_request(
                f"file {input_file_id} has purpose {stored.purpose}, not batch", "input_file_id"
            )
        data = await asyncio.to_thread(self.store.content, stored.id) or b""
        # up to max_body_bytes of JSONL, every line read as its call's body: off the event loop
        req = await asyncio.to_thread(batch_request, data, endpoint, window_seconds, metadata)
        batch = await self.calls.unary(request, ctx, self.jobs.CreateBatch(req, ctx))
        link = BatchLink(endpoint, input_file_id, window)
        await asyncio.to_thread(self.store.link_batch, batch.id, link, window_seconds + RESULT_TTL_S)
        return JSONResponse(batch_object(batch, link))

    async def list_batches(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        limit, after = _limit(request, default=20), request.query_params.get("after")
        # newest first; `after` pages on from that id (fetched with its predecessors, then cut)
        reply = await self.calls.unary(
            request, ctx, self.jobs.ListBatches(pb.ListBatchesRequest(limit=1000), ctx)
        )
        batches = list(reply.batches)
        if after:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        links = await asyncio.to_thread(lambda: [self.store.batch_link(b.id) for b in batches[: limit + 1]])
        return JSONResponse(
            _page([batch_object(b, link) for b, link in zip(batches, links, strict=False)], limit)
        )

    async def retrieve_batch(self, request: Request) -> Response:
        return await self._batch_call(request, self.jobs.GetBatch, pb.GetBatchRequest)

    async def cancel_batch(self, request: Request) -> Response:
        return await self._batch_call(request, self.jobs.CancelBatch, pb.CancelBatchRequest)

    # ---- helpers ------------------------------------------------------------------------------
    async def _batch_call(self, request: Request, rpc: Any, message: Any) -> Response:
        ctx = self.calls.context(request)
        batch_id = request.path_params["batch_id"]
        batch = await self.calls.unary(request, ctx, rpc(message(id=batch_id), ctx))
        link = await asyncio.to_thread(self.store.batch_link, batch.id)
        return JSONResponse(batch_object(batch, link))

    def _owner(self, ctx: HttpCallContext) -> str:
        return (self.calls.tokens.owner(ctx) or "") if self.calls.tokens else ""

    async def _file(self, ctx: HttpCallContext, file_id: str) -> StoredFile:
        stored = await asyncio.to_thread(self.store.get, file_id)
        if stored is None or (self.calls.tokens and stored.owner != self._owner(ctx)):
            raise HttpError(404, f"file {file_id!r:.80} not found", param="file_id", kind="not_found_error")
        return stored

    def _output_file(self, file_id: str, size: int) -> dict[str, Any]:
        batch_id, errors = batch_of_file(file_id) or ("", False)
        return {
            "id": output_file_id(batch_id, errors),
            "object": "file",
            "bytes": size,
            "created_at": 0,
            "expires_at": None,
            "filename": f"{batch_id}_{'error' if errors else 'output'}.jsonl",
            "purpose": "batch_output",
            "status": "processed",
            "status_details": None,
        }

    async def _result_lines(self, ctx: HttpCallContext, file_id: str) -> AsyncIterator[bytes]:
        """The lines of a batch's output or error file, from its results in input order."""
        batch_id, errors = batch_of_file(file_id) or ("", False)
        try:
            await self.jobs.GetBatch(pb.GetBatchRequest(id=batch_id), ctx)  # NOT_FOUND first
            link = await asyncio.to_thread(self.store.batch_link, batch_id)
            endpoint = link.endpoint if link else None
            results = self.jobs.GetBatchResults(pb.GetBatchResultsRequest(id=batch_id), ctx)
            try:
                async for result in results:
                    if result.HasField("error") == errors:
                        yield result_line(batch_id, result, endpoint)
            finally:
                await results.aclose()
        except CallAborted as exc:
            raise from_status(exc.code, exc.message) from None
        finally:
            ctx.end()


async def _next(lines: AsyncIterator[bytes]) -> bytes:
    return await anext(lines, b"")


async def _with_first(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        async for line in rest:
            yield line
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise bad_request(f"limit must be an integer in 1..{MAX_LIST}, got {raw!r:.20}", "limit")
    return int(raw)


def _page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's list page of the first `limit` of `data` (one more fetched says whether more follow)."""
    has_more, data = len(data) > limit, data[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
