"""The client's streaming calls as iterators: `ChunkStream` (blocking) and `AsyncChunkStream` (asyncio).

Flow: a grpc server-streaming call -> each message through `convert` (default `chunk_from_pb`: a
`Chunk`; image streams pass their own) -> the caller. Closing the stream, leaving its `with`, or
(async) cancelling the reading task cancels the RPC; a failed call raises `BailingClientError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from bailing.client_convert import chunk_from_pb, error_from_rpc


class ChunkStream:
    """Iterator of `Chunk`s (or what `convert` makes) of one streaming call; `close()` (or leaving a
    `with`) cancels the RPC."""

    def __init__(self, call: Any, convert: Callable[[Any], Any] = chunk_from_pb) -> None:
        self._call = call
        self._convert = convert
        self._closed = False

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        try:
            return self._convert(next(self._call))
        except StopIteration:
            self._closed = True
            raise
        except grpc.RpcError as exc:
            if self._closed:  # cancelled by close() from another thread
                raise StopIteration from None
            self._closed = True
            raise error_from_rpc(exc) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._call.cancel()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit grpc may already be torn down
            self.close()


class AsyncChunkStream:
    """Async iterator of `Chunk`s (or what `convert` makes); `close()`, leaving `async with` or
    cancelling the task cancels the RPC."""

    def __init__(self, call: Any, convert: Callable[[Any], Any] = chunk_from_pb) -> None:
        self._call = call
        self._convert = convert
        self._closed = False

    def __aiter__(self) -> AsyncChunkStream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        try:
            msg = await self._call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and not (task and task.cancelling()):  # close() ended a pending read
                raise StopAsyncIteration from None
            self.close()  # this task was cancelled: cancel the RPC too
            raise
        except grpc.RpcError as exc:
            if self._closed:
                raise StopAsyncIteration from None
            self._closed = True
            raise error_from_rpc(exc) from None
        if msg is grpc.aio.EOF:
            self._closed = True
            raise StopAsyncIteration
        return self._convert(msg)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._call.cancel()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
