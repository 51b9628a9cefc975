"""The client's batch-job calls (mixed into `Client` and `AsyncClient`, which provide `_jobs`, the Jobs
service stub, and `_unary`): create, get, list, cancel, and the results as they stream back.

Data and conversion live in `bailing.client_batch`; no protobuf type reaches the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc

from bailing.client_batch import (
    BatchInfo,
    BatchItemResult,
    batch_from_pb,
    batch_result_from_pb,
    build_batch_request,
)
from bailing.client_convert import error_from_rpc
from gateway.api import pb


class BatchCalls:
    _jobs: Any
    _metadata: Any
    _unary: Callable[..., Any]
    _timeout: Callable[[float | None], float | None]

    def create_batch(
        self,
        model: str,
        *,
        jsonl: bytes | None = None,
        items: Iterable[tuple[str, Mapping[str, Any]]] | None = None,
        completion_window_s: float = 0.0,
        skip_invalid_items: bool = False,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> BatchInfo:
        """Queue a batch: `jsonl` ({"custom_id", "body": GenerateRequest JSON} per line) or `items`
        ((custom_id, `generate` keyword fields such as prompt=..., max_tokens=...) pairs; with
        "method": "GenerateImage" / "SynthesizeSpeech", `generate_image` / `synthesize_speech` fields)."""
        request = build_batch_request(model, jsonl, items, completion_window_s, skip_invalid_items, metadata)
        return batch_from_pb(self._unary(self._jobs.CreateBatch, request, timeout))

    def get_batch(self, batch_id: str, timeout: float | None = None) -> BatchInfo:
        return batch_from_pb(self._unary(self._jobs.GetBatch, pb.GetBatchRequest(id=batch_id), timeout))

    def list_batches(self, limit: int = 100, timeout: float | None = None) -> list[BatchInfo]:
        """Newest first."""
        response = self._unary(self._jobs.ListBatches, pb.ListBatchesRequest(limit=limit), timeout)
        return [batch_from_pb(b) for b in response.batches]

    def cancel_batch(self, batch_id: str, timeout: float | None = None) -> BatchInfo:
        """Stop new items at once; running ones finish (status cancelling, then cancelled)."""
        return batch_from_pb(self._unary(self._jobs.CancelBatch, pb.CancelBatchRequest(id=batch_id), timeout))

    def batch_results(self, batch_id: str, timeout: float | None = None) -> Iterator[BatchItemResult]:
        """One result per finished item, in input order; `timeout` bounds the whole download."""
        request = pb.GetBatchResultsRequest(id=batch_id)
        call = self._jobs.GetBatchResults(request, timeout=self._timeout(timeout), metadata=self._metadata)
        try:
            for msg in call:
                yield batch_result_from_pb(msg)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()  # no-op once the stream ended


class AsyncBatchCalls:
    """See `BatchCalls`."""

    _jobs: Any
    _metadata: Any
    _unary: Callable[..., Any]
    _timeout: Callable[[float | None], float | None]

    async def create_batch(
        self,
        model: str,
        *,
        jsonl: bytes | None = None,
        items: Iterable[tuple[str, Mapping[str, Any]]] | None = None,
        completion_window_s: float = 0.0,
        skip_invalid_items: bool = False,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> BatchInfo:
        request = build_batch_request(model, jsonl, items, completion_window_s, skip_invalid_items, metadata)
        return batch_from_pb(await self._unary(self._jobs.CreateBatch, request, timeout))

    async def get_batch(self, batch_id: str, timeout: float | None = None) -> BatchInfo:
        return batch_from_pb(await self._unary(self._jobs.GetBatch, pb.GetBatchRequest(id=batch_id), timeout))

    async def list_batches(self, limit: int = 100, timeout: float | None = None) -> list[BatchInfo]:
        response = await self._unary(self._jobs.ListBatches, pb.ListBatchesRequest(limit=limit), timeout)
        return [batch_from_pb(b) for b in response.batches]

    async def cancel_batch(self, batch_id: str, timeout: float | None = None) -> BatchInfo:
        request = pb.CancelBatchRequest(id=batch_id)
        return batch_from_pb(await self._unary(self._jobs.CancelBatch, request, timeout))

    async def batch_results(
        self, batch_id: str, timeout: float | None = None
    ) -> AsyncIterator[BatchItemResult]:
        request = pb.GetBatchResultsRequest(id=batch_id)
        call = self._jobs.GetBatchResults(request, timeout=self._timeout(timeout), metadata=self._metadata)
        try:
            async for msg in call:
                yield batch_result_from_pb(msg)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()
