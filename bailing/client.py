"""Python client of the Bailing gateway: `Client` (blocking) and `AsyncClient` (grpc.aio).

Flow: keyword options and chat messages (dicts) -> `build_request` -> the gateway -> plain dataclasses
(`Completion` with its `Choice`s, `Chunk`, `ModelInfo`) back, with structured output
(`response_format=`) and tool calling (`tools=`; the calls come back as `ToolCall`s, see
`bailing.client_structured`); speech recognition (`transcribe`) sends audio and gets a `Transcription`
(or `Chunk`s) back; image generation (`generate_image`, from `bailing.client_image`) gets an
`ImageResult` (or `ImageEvent`s) back; speech synthesis (`synthesize_speech`, from
`bailing.client_speech`) gets a `SpeechResult` (or `AudioChunk`s) back, and a chat call with `speech=`
also the spoken reply's audio; batch jobs (`create_batch` ... `batch_results`) go to the Jobs service
and come back as `BatchInfo` / `BatchItemResult`. No protobuf type reaches the caller; every failure is
a `BailingClientError` carrying the gRPC status name (`BailingConnectionError` when nothing answers,
`BailingArgumentError`, also a ValueError, for a request refused before it is sent).
"""

from __future__ import annotations

import asyncio
import os
import queue
import time
from collections.abc import Iterable, Mapping
from typing import Any, Unpack

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bailing.client_batch import BatchInfo, BatchItemError, BatchItemResult
from bailing.client_batch_calls import AsyncBatchCalls, BatchCalls
from bailing.client_convert import (
    Choice,
    Chunk,
    Completion,
    ModelInfo,
    RequestOptions,
    Timing,
    Usage,
    build_request,
    error_from_rpc,
    health_status_name,
    messages_to_pb,
    models_from_pb,
)
from bailing.client_errors import BailingArgumentError, BailingClientError, BailingConnectionError
from bailing.client_image import (
    AsyncImageCalls,
    GeneratedImageData,
    ImageCalls,
    ImageDone,
    ImageEvent,
    ImageGenerated,
    ImageProgress,
    ImageQueued,
    ImageRequestOptions,
    ImageResult,
    ImageSize,
    ImageStarted,
    ImageUsage,
)
from bailing.client_speech import (
    AsyncSpeechCalls,
    AudioChunk,
    SpeechCalls,
    SpeechRequestOptions,
    SpeechResult,
    SpeechUsage,
    chunk_with_audio,
    completion_with_speech,
)
from bailing.client_speech_file import SpeechFileWriter, write_speech
from bailing.client_streams import AsyncChunkStream, ChunkStream
from bailing.client_structured import StructuredOptions, ToolCall
from bailing.client_transcribe import (
    TranscribeOptions,
    Transcription,
    build_transcribe_request,
    transcription_from_pb,
)
from gateway.api import pb, pb_grpc
from gateway.tls import channel_credentials

__all__ = [
    "AsyncChunkStream",
    "AsyncClient",
    "AudioChunk",
    "BailingArgumentError",
    "BailingClientError",
    "BailingConnectionError",
    "BatchInfo",
    "BatchItemError",
    "BatchItemResult",
    "Choice",
    "Chunk",
    "ChunkStream",
    "Client",
    "Completion",
    "GeneratedImageData",
    "ImageDone",
    "ImageEvent",
    "ImageGenerated",
    "ImageProgress",
    "ImageQueued",
    "ImageRequestOptions",
    "ImageResult",
    "ImageSize",
    "ImageStarted",
    "ImageUsage",
    "ModelInfo",
    "RequestOptions",
    "SpeechFileWriter",
    "SpeechRequestOptions",
    "SpeechResult",
    "SpeechUsage",
    "StructuredOptions",
    "Timing",
    "ToolCall",
    "TranscribeOptions",
    "Transcription",
    "Usage",
    "build_request",
    "messages_to_pb",
    "write_speech",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # must cover a request's media
_READY, _FAILED = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE
PemPath = str | os.PathLike  # TLS options are PEM file paths (read once, when the client is made)


def _connect_error(address: str, why: str) -> BailingConnectionError:
    return BailingConnectionError("UNAVAILABLE", f"cannot connect to {address}: {why}")


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class _Base:
    def __init__(self, address: str, token: str | None, timeout: float | None) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout


# ---- blocking client -------------------------------------------------------------------------
class Client(ImageCalls, SpeechCalls, BatchCalls, _Base):
    """Blocking client: `with Client("127.0.0.1:50051") as c: print(c.generate("ling", "Hi").text)`.

    TLS: give any of `tls_ca` (PEM file of the CA that signed the gateway's certificate; unset = the
    system's roots), `tls_cert` + `tls_key` (PEM files of a client certificate, for mutual TLS); with
    none, the channel is plaintext. A missing or unreadable file is a ValueError naming the option."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        timeout: float | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls_ca: PemPath | None = None,
        tls_cert: PemPath | None = None,
        tls_key: PemPath | None = None,
    ) -> None:
        super().__init__(address, token, timeout)
        tls, options = channel_credentials(tls_ca, tls_cert, tls_key), _channel_options(max_message_bytes)
        if tls is not None:
            self._channel = grpc.secure_channel(address, tls, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._jobs = pb_grpc.JobsStub(self._channel)

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def wait_ready(self, timeout: float, *, fail_fast: bool = True) -> None:
        """Block until the channel is connected. Raises `BailingConnectionError` after `timeout`
        seconds, or at the first failed attempt (connection refused, unknown host) if `fail_fast`."""
        states: queue.SimpleQueue[grpc.ChannelConnectivity] = queue.SimpleQueue()
        self._channel.subscribe(states.put, try_to_connect=True)
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    state = states.get(timeout=left)
                except queue.Empty:
                    break
                if state is grpc.ChannelConnectivity.READY:
                    return
                if fail_fast and state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    raise _connect_error(self.address, "the connection failed")
        finally:
            self._channel.unsubscribe(states.put)
        raise _connect_error(self.address, f"no connection within {timeout:g} s")

    def generate(
        self,
        model: str,
        prompt: str | None = None,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> Completion:
        """One complete answer. Unset options take the model's defaults; `timeout` is the RPC deadline (s).
        With `speech={...}` (models with audio output) the answer is also spoken: `Completion.speech`.
        `response_format=` holds the answer to JSON (a schema) or a regex; with `tools=` the model may
        call functions: `Completion.tool_calls` (finish_reason "tool_calls"). Bad arguments raise
        `BailingArgumentError` (a ValueError) before anything is sent."""
        request = build_request(model, prompt, messages, **options)
        return completion_with_speech(self._unary(self._stub.Generate, request, timeout))

    def stream(
        self,
        model: str,
        prompt: str | None = None,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> ChunkStream:
        """Deltas as they are produced (same options as `generate`; with `speech` some chunks carry
        `audio`, with `tools` some carry whole `tool_calls`); close the stream to cancel."""
        request = build_request(model, prompt, messages, **options)
        call = self._stub.GenerateStream(request, timeout=self._timeout(timeout), metadata=self._metadata)
        return ChunkStream(call, chunk_with_audio)

    def transcribe(
        self,
        model: str,
        audio: bytes | str | os.PathLike,
        *,
        mime_type: str | None = None,
        timeout: float | None = None,
        **options: Unpack[TranscribeOptions],
    ) -> Transcription:
        """The transcript of `audio` (its bytes or a file path) by a model that accepts audio input."""
        request = build_transcribe_request(model, audio, mime_type=mime_type, **options)
        return transcription_from_pb(self._unary(self._stub.Transcribe, request, timeout))

    def transcribe_stream(
        self,
        model: str,
        audio: bytes | str | os.PathLike,
        *,
        mime_type: str | None = None,
        timeout: float | None = None,
        **options: Unpack[TranscribeOptions],
    ) -> ChunkStream:
        """The transcript as `Chunk`s of text, as it is produced (same arguments as `transcribe`)."""
        request = build_transcribe_request(model, audio, mime_type=mime_type, **options)
        call = self._stub.TranscribeStream(request, timeout=self._timeout(timeout), metadata=self._metadata)
        return ChunkStream(call)

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        return models_from_pb(self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The grpc.health.v1 status of `service` ("" = the whole gateway): "SERVING", "NOT_SERVING", ..."""
        request = health_pb2.HealthCheckRequest(service=service)
        return health_status_name(self._unary(self._health.Check, request, timeout))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- asyncio client --------------------------------------------------------------------------
class AsyncClient(AsyncImageCalls, AsyncSpeechCalls, AsyncBatchCalls, _Base):
    """grpc.aio client with the `Client` API (TLS options included); create it inside the event loop
    that uses it."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        timeout: float | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls_ca: PemPath | None = None,
        tls_cert: PemPath | None = None,
        tls_key: PemPath | None = None,
    ) -> None:
        super().__init__(address, token, timeout)
        tls, options = channel_credentials(tls_ca, tls_cert, tls_key), _channel_options(max_message_bytes)
        if tls is not None:
            self._channel = grpc.aio.secure_channel(address, tls, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._jobs = pb_grpc.JobsStub(self._channel)

    async def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    async def wait_ready(self, timeout: float, *, fail_fast: bool = True) -> None:
        """See `Client.wait_ready`."""
        try:
            async with asyncio.timeout(timeout):
                while (state := self._channel.get_state(try_to_connect=True)) is not _READY:
                    if fail_fast and state is _FAILED:
                        raise _connect_error(self.address, "the connection failed")
                    await self._channel.wait_for_state_change(state)
        except TimeoutError:
            raise _connect_error(self.address, f"no connection within {timeout:g} s") from None

    async def generate(
        self,
        model: str,
        prompt: str | None = None,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> Completion:
        request = build_request(model, prompt, messages, **options)
        return completion_with_speech(await self._unary(self._stub.Generate, request, timeout))

    def stream(
        self,
        model: str,
        prompt: str | None = None,
        messages: Iterable[Mapping[str, Any]] | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncChunkStream:
        request = build_request(model, prompt, messages, **options)
        call = self._stub.GenerateStream(request, timeout=self._timeout(timeout), metadata=self._metadata)
        return AsyncChunkStream(call, chunk_with_audio)

    async def transcribe(
        self,
        model: str,
        audio: bytes | str | os.PathLike,
        *,
        mime_type: str | None = None,
        timeout: float | None = None,
        **options: Unpack[TranscribeOptions],
    ) -> Transcription:
        request = build_transcribe_request(model, audio, mime_type=mime_type, **options)
        return transcription_from_pb(await self._unary(self._stub.Transcribe, request, timeout))

    def transcribe_stream(
        self,
        model: str,
        audio: bytes | str | os.PathLike,
        *,
        mime_type: str | None = None,
        timeout: float | None = None,
        **options: Unpack[TranscribeOptions],
    ) -> AsyncChunkStream:
        request = build_transcribe_request(model, audio, mime_type=mime_type, **options)
        call = self._stub.TranscribeStream(request, timeout=self._timeout(timeout), metadata=self._metadata)
        return AsyncChunkStream(call)

    async def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        return models_from_pb(await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_status_name(await self._unary(self._health.Check, request, timeout))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
