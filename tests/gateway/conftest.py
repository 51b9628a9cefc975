"""Gateway test helpers: an in-process gateway on a free port, and a stand-in worker made of Redis data.

`FakeWorker` writes what a real worker writes (heartbeat ZSET entry, WorkerInfo, stream events; for
image jobs the image bytes under `image_key`, for speech the audio chunks under `audio_key`) and takes
tasks off the real Celery queue list; no Redis, Celery or gRPC code is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import grpc
import pytest
import redis

from pipelines.protocol import (
    IMAGE_TTL_S,
    AudioChunkInfo,
    Event,
    EventType,
    ImageInfo,
    ImageSummary,
    SpeechSummary,
    Usage,
    WorkerInfo,
    audio_key,
    image_key,
    queue_name,
    stream_key,
    worker_info_key,
    workers_key,
)


class GatewayThread:
    """A GatewayServer running on its own event loop in a daemon thread."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="gateway")
        self.gateway = None

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> GatewayThread:
        from gateway.app import GatewayServer

        self.thread.start()

        async def start():
            self.gateway = GatewayServer(self.cfg)
            await self.gateway.start()

        self.run(start())
        return self

    @property
    def address(self) -> str:
        return self.gateway.address

    def stop(self) -> None:
        if self.gateway is not None:
            self.run(self.gateway.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture()
def model() -> str:
    """A model name of this test's own, so tests sharing one Redis never see each other's workers."""
    return f"ling-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def start_gateway(redis_url: str):
    """start_gateway(models, **config) -> a running GatewayThread; stopped after the test."""
    from gateway.config import GatewayConfig

    started: list[GatewayThread] = []

    def start(models: tuple[str, ...], **kwargs) -> GatewayThread:
        kwargs.setdefault("port", 0)
        cfg = GatewayConfig(redis_url=redis_url, models=models, **kwargs)
        started.append(GatewayThread(cfg).start())
        return started[-1]

    yield start
    for g in started:
        g.stop()


@pytest.fixture()
def channel_to():
    """channel_to(address) -> a grpc channel closed after the test."""
    channels: list[grpc.Channel] = []

    def open_(address: str, **options) -> grpc.Channel:
        channels.append(grpc.insecure_channel(address, options=list(options.items())))
        return channels[-1]

    yield open_
    for c in channels:
        c.close()


class FakeWorker:
    """Heartbeats for `model` and writes stream events, like a worker that never runs the model."""

    def __init__(self, redis_url: str, model: str, **info) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.model = model
        self.worker_id = f"fake-{uuid.uuid4().hex[:8]}"
        self.info = WorkerInfo(
            worker_id=self.worker_id,
            model=model,
            family=info.pop("family", "ling"),
            host="test",
            pid=0,
            device="cpu",
            max_num_seqs=info.pop("max_num_seqs", 4),
            max_model_len=info.pop("max_model_len", 2048),
            **info,
        )
        self._seq: dict[str, int] = {}
        self._beating = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FakeWorker:
        self.redis.set(worker_info_key(self.worker_id), self.info.to_json())
        self.beat()
        self._beating.set()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def beat(self) -> None:
        self.redis.zadd(workers_key(self.model), {self.worker_id: time.time()})

    def _loop(self) -> None:
        while self._beating.is_set():
            self.beat()
            time.sleep(0.2)

    def stop_heartbeat(self) -> None:
        self._beating.clear()
        if self._thread is not None:
            self._thread.join(2)

    def emit(self, request_id: str, type: EventType, **fields) -> None:
        seq = self._seq.get(request_id, 0)
        self._seq[request_id] = seq + 1
        if type is EventType.STARTED:
            fields.setdefault("worker_id", self.worker_id)
        event = Event(seq=seq, type=type, time=time.time(), **fields)
        self.redis.xadd(stream_key(request_id), event.encode())

    def answer(self, request_id: str, text: str = "hello world", reasoning: str = "") -> None:
        """A complete normal stream: started, deltas, done."""
        self.emit(request_id, EventType.STARTED)
        if reasoning:
            self.emit(request_id, EventType.DELTA, reasoning_text=reasoning)
        for word in text.split(" "):
            self.emit(request_id, EventType.DELTA, text=word + " ")
        usage = Usage(prompt_tokens=3, completion_tokens=len(text.split(" ")))
        self.emit(request_id, EventType.DONE, finish_reason="stop", usage=usage)

    def put_image(
        self, request_id: str, index: int, data: bytes, *, size=(64, 64), seed=7, mime_type="image/png"
    ) -> str:
        """Park one image's bytes under its key (TTL IMAGE_TTL_S), then emit its IMAGE event."""
        key = image_key(request_id, index)
        self.redis.set(key, data, ex=IMAGE_TTL_S)
        info = ImageInfo(index, key, mime_type, size[0], size[1], seed + index, len(data))
        self.emit(request_id, EventType.IMAGE, info=info.to_info())
        return key

    def draw(
        self,
        request_id: str,
        images: Sequence[bytes] = (b"\x89PNG-image-0",),
        *,
        steps: int = 3,
        size: tuple[int, int] = (64, 64),
        requested: tuple[int, int] = (0, 0),
        seed: int = 7,
        guidance_scale: float = 4.0,
        prompt_tokens: int = 5,
        order: Sequence[int] | None = None,
    ) -> list[str]:
        """A complete image stream: started, one progress event per step, each image (in `order`,
        default index order), done with an ImageSummary; returns the image keys."""
        self.emit(request_id, EventType.STARTED)
        for step in range(1, steps + 1):
            self.emit(request_id, EventType.PROGRESS, info={"step": step, "steps": steps})
        keys = [
            self.put_image(request_id, i, images[i], size=size, seed=seed)
            for i in (order if order is not None else range(len(images)))
        ]
        summary = ImageSummary(*requested, *size, steps, guidance_scale, seed, len(images))
        usage = Usage(prompt_tokens=prompt_tokens, forwards=steps)
        self.emit(request_id, EventType.DONE, usage=usage, info=summary.to_info())
        return keys

    def put_audio(
        self,
        request_id: str,
        index: int,
        data: bytes,
        *,
        rate: int,
        start_s: float,
        duration_s: float,
        text="",
    ) -> str:
        """Park one audio chunk's bytes under its key (TTL IMAGE_TTL_S), then emit its AUDIO event."""
        key = audio_key(request_id, index)
        self.redis.set(key, data, ex=IMAGE_TTL_S)
        info = AudioChunkInfo(index, key, rate, start_s, duration_s, len(data), text)
        self.emit(request_id, EventType.AUDIO, info=info.to_info())
        return key

    def speak(
        self,
        request_id: str,
        chunks: Sequence[bytes],
        *,
        rate: int = 16000,
        fmt: str = "wav",
        durations: Sequence[float] | None = None,
        seed: int = 7,
        prompt_tokens: int = 5,
        started: bool = True,
        done: bool = True,
    ) -> list[str]:
        """A speech stream: started, one AUDIO event per chunk (PCM chunks' durations from their size),
        done with a SpeechSummary under info["speech"]; returns the chunk keys."""
        if started:
            self.emit(request_id, EventType.STARTED)
        if durations is None:
            durations = [len(c) / (2 * rate) for c in chunks]
        keys, at = [], 0.0
        for i, (chunk, seconds) in enumerate(zip(chunks, durations, strict=True)):
            keys.append(
                self.put_audio(request_id, i, chunk, rate=rate, start_s=at, duration_s=seconds, text=f"s{i}")
            )
            at += seconds
        if done:
            summary = SpeechSummary(rate, at, fmt, seed, len(chunks), latent_frames=4 * len(chunks))
            usage = Usage(prompt_tokens=prompt_tokens)
            self.emit(
                request_id,
                EventType.DONE,
                finish_reason="stop",
                usage=usage,
                info={"speech": summary.to_info()},
            )
        return keys

    def take_job(self, timeout: float = 10.0) -> dict:
        """Pop the next Celery message of the model's queue; returns its job payload (args[0])."""
        item = self.redis.brpop([queue_name(self.model)], timeout=timeout)
        assert item is not None, f"no task arrived on {queue_name(self.model)} in {timeout} s"
        message = json.loads(item[1])
        assert message["headers"]["task"] == "bailing.generate"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        return args[0]

    def close(self) -> None:
        self.stop_heartbeat()
        self.redis.zrem(workers_key(self.model), self.worker_id)
        self.redis.close()


@pytest.fixture()
def fake_worker(redis_url: str) -> Iterator:
    """fake_worker(model, **info) -> a started FakeWorker; cleaned up after the test."""
    made: list[FakeWorker] = []

    def make(model: str, **info) -> FakeWorker:
        made.append(FakeWorker(redis_url, model, **info).start())
        return made[-1]

    yield make
    for w in made:
        w.close()
