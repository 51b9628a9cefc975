"""The official `openai` Python package against `bailing up`'s OpenAI-compatible HTTP API (the session's
local stack: embedded Valkey, gateway, demo workers; no mocks): models, chat unary and streamed, n,
Ring's reasoning_content, an image as a data URL to Ming, tools and JSON schemas, the same answer as
gRPC for the same seeded request, log-probabilities, and a disconnect that cancels the request in the
worker."""

from __future__ import annotations

import base64
import json
import time

import httpx2
import openai
import pytest
import redis

from bailing.client import Client
from pipelines.protocol import Event, EventType, stream_key

pytestmark = pytest.mark.slow

SEEDED = {"max_tokens": 12, "temperature": 1.0, "seed": 7}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def oai(stack):
    with openai.OpenAI(base_url=f"http://{stack.http_address}/v1", api_key="unused", timeout=120) as client:
        yield client


def test_models_lists_what_the_stack_serves(oai, stack):
    assert sorted(m.id for m in oai.models.list().data) == sorted(stack.models)


def test_streamed_deltas_concatenate_to_the_unary_answer(oai):
    whole = oai.chat.completions.create(
        model="ling", messages=HELLO, extra_body={"ignore_eos": True}, **SEEDED
    )
    assert whole.object == "chat.completion" and whole.usage.completion_tokens == 12
    stream = oai.chat.completions.create(
        model="ling",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
        **SEEDED,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    for side in (chunks[-1].usage, whole.usage):  # (the second call may find the prompt's KV cached)
        assert (side.prompt_tokens, side.completion_tokens) == (whole.usage.prompt_tokens, 12)


def test_n_samples_come_back_as_choices(oai):
    out = oai.chat.completions.create(
        model="ling", messages=HELLO, n=3, extra_body={"ignore_eos": True}, **SEEDED
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.message.content for c in out.choices}) > 1  # seeds seed, seed + 1, seed + 2
    assert out.usage.completion_tokens == 3 * 12


def test_ring_reasoning_is_reasoning_content(oai):
    out = oai.chat.completions.create(model="ring", messages=HELLO, **SEEDED)
    message = out.choices[0].message
    assert message.model_extra["reasoning_content"]
    assert out.usage.completion_tokens_details.reasoning_tokens > 0


def test_an_image_data_url_reaches_ming(oai, stack):
    photo = base64.b64encode((stack.dir / "samples" / "photo.jpg").read_bytes()).decode()
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{photo}"}},
    ]
    out = oai.chat.completions.create(model="ming", messages=[{"role": "user", "content": content}], **SEEDED)
    assert out.usage.prompt_tokens > 100  # the image's tokens are in the prompt
    assert out.choices[0].finish_reason in ("stop", "length")


def test_http_and_grpc_answer_a_seeded_request_alike(oai, stack):
    over_http = oai.chat.completions.create(model="ling", messages=HELLO, **SEEDED)
    with Client(stack.address, timeout=120) as grpc_client:
        over_grpc = grpc_client.generate("ling", messages=HELLO, **SEEDED)
    assert over_http.choices[0].message.content == over_grpc.text
    assert over_http.choices[0].finish_reason == over_grpc.finish_reason
    assert over_http.usage.prompt_tokens == over_grpc.usage.prompt_tokens
    assert over_http.usage.completion_tokens == over_grpc.usage.completion_tokens


def test_logprobs_come_back_as_the_openai_client_s_objects(oai):
    chat = oai.chat.completions.create(
        model="ling", messages=HELLO, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True}, **SEEDED
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens == 12
    assert all(len(t.top_logprobs) == 2 and t.logprob <= t.top_logprobs[0].logprob <= 0 for t in content)
    text = oai.completions.create(
        model="ling", prompt="The quick brown fox", logprobs=3, extra_body={"ignore_eos": True}, **SEEDED
    )
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 12 and lp.text_offset[0] == 0


def test_tools_and_schemas_through_the_openai_client(oai):
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 8}},
                "required": ["city"],
            },
        },
    }
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    out = oai.chat.completions.create(
        model="ling",
        messages=ask,
        tools=[weather],
        tool_choice="required",
        parallel_tool_calls=False,
        **{**SEEDED, "max_tokens": 64},
    )
    (call,) = out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    ask += [out.choices[0].message.model_dump(exclude_none=True)]
    ask += [{"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 3}'}]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    answer = oai.chat.completions.create(
        model="ling",
        messages=ask,
        response_format={"type": "json_schema", "json_schema": {"name": "ack", "schema": schema}},
        max_tokens=32,
    )
    assert json.loads(answer.choices[0].message.content)["ok"] in (True, False)


def test_errors_are_the_openai_client_s_exceptions(oai):
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=HELLO)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="ling", messages=HELLO, temperature=-1)
    assert "temperature" in bad.value.message


def test_a_disconnect_cancels_the_request_in_the_worker(stack):
    body = {"model": "ling", "messages": HELLO, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    body["request_id"] = "http-disconnect-e2e"
    with httpx2.stream(
        "POST", f"http://{stack.http_address}/v1/chat/completions", json=body, timeout=60
    ) as r:
        assert next(r.iter_lines()).startswith("data: ")
    db = redis.Redis.from_url(stack.redis_url)
    deadline, last = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        events = [Event.decode(fields) for _, fields in db.xrange(stream_key(body["request_id"]))]
        if events and events[-1].terminal:
            last = events[-1]
            break
        time.sleep(0.1)
    assert last is not None and last.type == EventType.CANCELLED  # the worker dropped it


def _serving(oai, output: str) -> str:
    """The demo model that produces `output` (image, audio): the demo stack has one."""
    return next(m.id for m in oai.models.list().data if output in m.model_extra["outputs"])


def test_a_transcription_upload(oai, stack):
    speech = stack.dir / "samples" / "speech.wav"
    with speech.open("rb") as f:
        out = oai.audio.transcriptions.create(model="ming", file=f, temperature=0)
    assert isinstance(out.text, str) and out.text  # the demo model's text (min_new_tokens: never empty)
    with speech.open("rb") as f:
        text = oai.audio.transcriptions.create(model="ming", file=f, response_format="text", temperature=0)
    assert text == out.text  # the same greedy transcript, as text/plain


def test_a_batch_upload_create_poll_download(oai):
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "ling",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": 4,
            },
        }
        for i in range(3)
    ]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    upload = oai.files.create(file=("questions.jsonl", data), purpose="batch")
    assert upload.bytes == len(data) and oai.files.content(upload.id).read() == data
    batch = oai.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = oai.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3 and batch.error_file_id is None
    out = [json.loads(x) for x in oai.files.content(batch.output_file_id).read().splitlines()]
    assert [x["custom_id"] for x in out] == ["q0", "q1", "q2"]  # ids exact, in input order
    for x in out:
        body = x["response"]["body"]
        assert x["response"]["status_code"] == 200 and x["error"] is None
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 4
    assert batch.id in [b.id for b in oai.batches.list(limit=100).data]


def test_an_image_and_speech_from_the_omni_model(oai):
    image = oai.images.generate(
        model=_serving(oai, "image"), prompt="a red fox", size="64x64", extra_body={"steps": 2, "seed": 3}
    )
    (picture,) = image.data
    assert base64.b64decode(picture.b64_json).startswith(b"\x89PNG")
    talker = _serving(oai, "audio")
    voice = next(m for m in oai.models.list().data if m.id == talker).model_extra.get("voices", [""])[0]
    with oai.audio.speech.with_streaming_response.create(
        model=talker, input="Hello there.", voice=voice, response_format="wav"
    ) as speech:
        audio = speech.read()
    assert audio.startswith(b"RIFF") and len(audio) > 44
    spoken = oai.chat.completions.create(
        model=talker,
        messages=HELLO,
        modalities=["text", "audio"],
        audio={"voice": voice, "format": "wav"},
        **SEEDED,
    )
    reply = spoken.choices[0].message.audio
    assert reply.transcript and base64.b64decode(reply.data).startswith(b"RIFF")
