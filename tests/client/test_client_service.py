"""`Client`, `AsyncClient` and the client CLI against a real local stack (no mocks)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
import redis

from bailing.client import AsyncClient, BailingClientError, BailingConnectionError, Client
from pipelines.protocol import Event, EventType, stream_key

pytestmark = pytest.mark.slow

GREEDY = {"max_tokens": 8, "temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def client(stack):
    with Client(stack.address, timeout=60) as c:
        yield c


def bailing(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bailing.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_generate_prompt(client):
    out = client.generate("ling", "The quick brown fox", **GREEDY)
    assert out.model == "ling" and out.request_id
    assert out.finish_reason == "length"
    assert out.usage.completion_tokens == 8 and out.usage.prompt_tokens > 0
    assert out.text
    assert 0 <= out.timing.time_to_first_token_s <= out.timing.total_s


def test_generate_chat_and_request_id(client):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    out = client.generate("ling", messages=messages, request_id="client-test-1", **GREEDY)
    assert out.request_id == "client-test-1"
    assert out.usage.completion_tokens == 8


def test_stream_matches_generate(client):
    whole = client.generate("ling", "Once upon a time", **GREEDY)
    with client.stream("ling", "Once upon a time", **GREEDY) as stream:
        chunks = list(stream)
    assert "".join(c.text for c in chunks) == whole.text
    assert all(not c.finish_reason and c.usage is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 8
    assert len({c.request_id for c in chunks}) == 1


def _terminal_event(redis_url: str, request_id: str, timeout: float = 30.0) -> Event:
    """The terminal event the worker wrote to the request's Redis stream."""
    db = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [Event.decode(fields) for _, fields in db.xrange(stream_key(request_id))]
        if events and events[-1].terminal:
            return events[-1]
        time.sleep(0.1)
    pytest.fail(f"no terminal event for {request_id} within {timeout} s")


def test_closing_a_stream_cancels_the_request(stack, client):
    stream = client.stream("ling", "Tell me a long story", max_tokens=2000, ignore_eos=True)
    request_id = next(stream).request_id
    stream.close()
    assert list(stream) == []
    last = _terminal_event(stack.redis_url, request_id)
    assert last.type == EventType.CANCELLED  # the worker dropped it: the cancel went all the way
    assert client.generate("ling", "still serving?", **GREEDY).usage.completion_tokens == 8


def test_server_errors_keep_their_status(client):
    with pytest.raises(BailingClientError) as unknown:
        client.generate("no-such-model", "hi")
    assert unknown.value.code == "NOT_FOUND" and "no-such-model" in unknown.value.details
    with pytest.raises(BailingClientError) as bad:
        client.generate("ling", "hi", temperature=-1.0)
    assert bad.value.code == "INVALID_ARGUMENT" and "temperature" in bad.value.details
    with pytest.raises(BailingClientError) as in_stream:
        list(client.stream("ling", "hi", top_p=7.0))
    assert in_stream.value.code == "INVALID_ARGUMENT"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "today's weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_json_object_answer(client):
    ask = [{"role": "user", "content": "Describe Oslo as JSON."}]
    out = client.generate(
        "ling", messages=ask, response_format={"type": "json_object"}, max_tokens=256, temperature=1.0, seed=3
    )
    assert out.finish_reason == "stop", out
    assert isinstance(json.loads(out.text), dict)


def test_required_tool_call(client):
    """A forced call, one at most (with parallel calls a random-weight model keeps calling until
    max_tokens cuts it off: finish_reason "length")."""
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    out = client.generate(
        "ling",
        messages=ask,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=96,
        temperature=1.0,
        seed=3,
    )
    assert out.finish_reason == "tool_calls", out
    assert len(out.tool_calls) == 1 and out.tool_calls == out.choices[0].tool_calls
    call = out.tool_calls[0]
    assert call.name == "get_weather" and call.id
    assert isinstance(json.loads(call.arguments), dict)


def test_models_and_health(client):
    (ling,) = [m for m in client.list_models() if m.name == "ling"]
    assert ling.family == "ling" and ling.live_workers >= 1 and ling.max_model_len > 0
    assert "text" in ling.modalities
    assert client.health() == "SERVING"


def test_async_client(stack):
    async def main():
        async with AsyncClient(stack.address, timeout=60) as client:
            await client.wait_ready(10)
            assert await client.health() == "SERVING"
            assert "ling" in [m.name for m in await client.list_models()]
            whole = await client.generate("ling", "Once upon a time", **GREEDY)
            async with client.stream("ling", "Once upon a time", **GREEDY) as stream:
                text = "".join([chunk.text async for chunk in stream])
            assert text == whole.text
            long = client.stream("ling", "A long one", max_tokens=2000, ignore_eos=True)
            request_id = (await long.__anext__()).request_id
            await long.aclose()
            assert [chunk async for chunk in long] == []
            assert _terminal_event(stack.redis_url, request_id).type == EventType.CANCELLED

            long = client.stream("ling", "Another long one", max_tokens=2000, ignore_eos=True)
            seen = []

            async def consume():
                async for chunk in long:  # awaits only inside the stream's read
                    seen.append(chunk)

            consumer = asyncio.create_task(consume())
            while not seen:
                await asyncio.sleep(0.01)
            consumer.cancel()  # cancelling the reading task cancels the RPC
            with pytest.raises(asyncio.CancelledError):
                await consumer
            assert [chunk async for chunk in long] == []
            assert _terminal_event(stack.redis_url, seen[0].request_id).type == EventType.CANCELLED
            with pytest.raises(BailingClientError, match="NOT_FOUND"):
                await client.generate("no-such-model", "hi")

    asyncio.run(main())


def test_async_client_dead_address(dead_address):
    async def main():
        async with AsyncClient(dead_address) as client:
            with pytest.raises(BailingConnectionError):
                await client.wait_ready(5)
            with pytest.raises(BailingConnectionError):
                await client.health(timeout=5)

    asyncio.run(main())


# ---- the CLI ---------------------------------------------------------------------------------
def test_cli_chat(stack):
    done = bailing("chat", "--model", "ling", "--address", stack.address, "--max-tokens", "8", "hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "tokens" in done.stderr


def test_cli_chat_stream_and_json(stack):
    common = (
        "chat",
        "--model",
        "ling",
        "--address",
        stack.address,
        "--max-tokens",
        "6",
        "--temperature",
        "0",
    )
    streamed = bailing(*common, "--stream", "hello")
    assert streamed.returncode == 0, streamed.stderr
    as_json = bailing(*common, "--json", "hello")
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    assert record["model"] == "ling" and record["usage"]["completion_tokens"] <= 6
    assert streamed.stdout.rstrip("\n") == record["text"].rstrip("\n")


def test_cli_chat_bad_request_is_a_usage_error(stack):
    done = bailing("chat", "--model", "ling", "--address", stack.address, "--temperature", "-1", "hi")
    assert done.returncode == 2
    assert "INVALID_ARGUMENT" in done.stderr and "Traceback" not in done.stderr


def test_cli_models(stack):
    done = bailing("models", "--address", stack.address)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "FAMILY"]
    assert any(row.split()[:3] == ["ling", "ling", "1"] for row in rows)


def test_cli_healthcheck(stack, dead_address):
    ok = bailing("healthcheck", "--address", stack.address)
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    unknown = bailing("healthcheck", "--address", stack.address, "--service", "no-such-service")
    assert unknown.returncode == 1
    down = bailing("healthcheck", "--address", dead_address, "--timeout", "5")
    assert down.returncode == 3 and "cannot connect" in down.stderr
    chat_down = bailing("chat", "--model", "ling", "--address", dead_address, "--timeout", "5", "hi")
    assert chat_down.returncode == 3


def test_cli_worker_healthcheck(stack):
    done = bailing("healthcheck", "--worker", "ling", "--redis-url", stack.redis_url)
    assert done.returncode == 0, done.stdout + done.stderr
    missing = bailing("healthcheck", "--worker", "no-such-model", "--redis-url", stack.redis_url)
    assert missing.returncode == 1
