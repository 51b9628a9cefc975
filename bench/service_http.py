"""A lean OpenAI-API client for the service benchmarks: greedy `ignore_eos` completions streamed as
server-sent events from the gateway's HTTP API (POST /v1/completions), one HTTP/1.1 connection per
request over raw asyncio streams, each returning the same `StreamTrace` the gRPC client does.

Lean on purpose: the client shares the benchmark's cores with the service, so it reads the chunked
body and splits SSE frames itself and decodes each frame's JSON once (as the gRPC client decodes each
chunk's protobuf once), with no HTTP library's per-chunk machinery in between.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from bench.service_stack import StreamTrace


class HttpStreamError(RuntimeError):
    """The gateway answered with an error status, or sent an `error` event."""


def _request(port: int, model: str, prompt: str, new_tokens: int, request_id: str) -> bytes:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": new_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},  # the last chunk carries completion_tokens
        "request_id": request_id,  # the worker's event stream is keyed by it (service_share)
    }
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


async def _headers(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = int((await reader.readline()).split(b" ", 2)[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The response body as it arrives (chunked transfer coding undone)."""
    if not chunked:
        while part := await reader.read(65536):
            yield part
        return
    while size := int((await reader.readline()).split(b";")[0], 16):
        yield (await reader.readexactly(size + 2))[:-2]  # the chunk, less its CRLF
    await reader.readline()  # the CRLF after the last (empty) chunk


async def sse_data(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The `data:` payload of each server-sent event, in order."""
    buffer = b""
    async for part in _body(reader, chunked):
        buffer += part
        *frames, buffer = buffer.split(b"\n\n")
        for frame in frames:
            for line in frame.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip()


async def stream_one_http(
    port: int, request_id: str, prompt: str, new_tokens: int, model: str = "ling"
) -> StreamTrace:
    """One greedy `ignore_eos` completion of `new_tokens` tokens, streamed over its own connection;
    the first chunk is the first SSE frame (a stream's first chunk carries text, or is the end)."""
    trace = StreamTrace(request_id, sent=time.time())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_request(port, model, prompt, new_tokens, request_id))
        status, headers = await _headers(reader)
        if status != 200:
            raise HttpStreamError(f"HTTP {status}: {(await reader.read()).decode(errors='replace')[:300]}")
        async for data in sse_data(reader, headers.get("transfer-encoding", "").lower() == "chunked"):
            if not trace.first:
                trace.first = time.time()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise HttpStreamError(f"request {request_id}: {chunk['error']}")
            if chunk.get("usage"):
                trace.tokens = chunk["usage"]["completion_tokens"]
    finally:
        writer.close()
    return trace


async def stream_all_http(
    port: int, prompts: list[str], new_tokens: int, tag: str, model: str = "ling"
) -> list[StreamTrace]:
    """Every prompt streamed at once, a connection each (HTTP/1.1 has one stream per connection)."""
    calls = (stream_one_http(port, f"{tag}-{i}", p, new_tokens, model) for i, p in enumerate(prompts))
    return list(await asyncio.gather(*calls))
