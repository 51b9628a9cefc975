"""Logprobs at the gateway (no server): `sampling.logprobs` checked, events -> Choice / GenerateChunk
logprobs, OpenAI's request fields -> `sampling.logprobs`, and the OpenAI reply shapes (chat and
completions, unary and streamed); plus a batch item's logprobs through its stored result."""

from __future__ import annotations

import json

import grpc
import pytest

from gateway.api import pb
from gateway.batch_convert import result_to_pb
from gateway.config import GatewayConfig
from gateway.convert import request_to_job
from gateway.errors import Rejection
from gateway.http_api.errors import HttpError
from gateway.http_api.replies import ChunkWriter, chat_completion, completion
from gateway.http_api.requests import chat_request, completion_request
from gateway.replies import ResponseBuilder, event_to_chunks
from gateway.state import RequestTrace
from gateway.transcribe import transcribe_to_job
from pipelines.protocol import Event, EventType, TokenLogprob, TopLogprob, Usage

CFG = GatewayConfig(redis_url="redis://unused", models=("ling",))
WAV = b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 32
CHAT = {"model": "ling", "messages": [{"role": "user", "content": "hi"}]}


def lp(token: str, logprob: float, *top: tuple[str, float], raw: bytes | None = None) -> TokenLogprob:
    alts = tuple(TopLogprob(100 + i, t, v, t.encode()) for i, (t, v) in enumerate(top))
    return TokenLogprob(len(token), token, logprob, token.encode() if raw is None else raw, alts)


HEL = lp("Hel", -0.25, ("Hel", -0.25), ("He", -1.5))
LO = lp("lo", -2.0, ("la", -0.5), ("lo", -2.0))
HALF = lp("\ufffd", float("-inf"), ("x", -0.125), raw=b"\xe4\xbd")


def events() -> list[Event]:
    return [
        Event(0, EventType.STARTED, worker_id="w"),
        Event(1, EventType.DELTA, reasoning_text="hmm"),
        Event(2, EventType.DELTA, text="Hel", logprobs=(HEL,)),
        Event(3, EventType.DELTA, logprobs=(LO,)),  # its text still held back
        Event(4, EventType.DELTA, text="lo", logprobs=(HALF,)),
        Event(5, EventType.DONE, finish_reason="length", usage=Usage(2, 4, 1)),
    ]


# ---- the gRPC boundary ---------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 5, 20])
def test_logprobs_in_range_reach_the_job(k):
    req = pb.GenerateRequest(model="ling", prompt="x", sampling=pb.SamplingParams(logprobs=k))
    job, _ = request_to_job(req, CFG, None, submitted_at=0.0)
    assert job.sampling.logprobs == k
    plain, _ = request_to_job(pb.GenerateRequest(model="ling", prompt="x"), CFG, None, submitted_at=0.0)
    assert plain.sampling.logprobs is None


@pytest.mark.parametrize("k", [-1, 21])
def test_logprobs_out_of_range_are_invalid_argument(k):
    req = pb.GenerateRequest(model="ling", prompt="x", sampling=pb.SamplingParams(logprobs=k))
    with pytest.raises(Rejection) as err:
        request_to_job(req, CFG, None, submitted_at=0.0)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.logprobs must be in [0, 20]" in err.value.message and str(k) in err.value.message


def test_a_transcription_refuses_logprobs():
    req = pb.TranscribeRequest(model="ling", audio=pb.Media(data=WAV), sampling=pb.SamplingParams(logprobs=1))
    with pytest.raises(Rejection, match="sampling.logprobs"):
        transcribe_to_job(req, CFG, None, submitted_at=0.0)


def test_chunks_carry_the_logprobs_with_the_text_delta():
    chunks = [c for e in events()[1:-1] for c in event_to_chunks("r", e)]
    assert [(c.reasoning_text, c.text, len(c.logprobs)) for c in chunks] == [
        ("hmm", "", 0),
        ("", "Hel", 1),
        ("", "", 1),
        ("", "lo", 1),
    ]
    got = chunks[1].logprobs[0]
    assert (got.token, got.bytes, got.logprob, got.token_id) == ("Hel", b"Hel", -0.25, 3)
    assert [(a.token, a.logprob, a.token_id) for a in got.top] == [("Hel", -0.25, 100), ("He", -1.5, 101)]
    assert chunks[3].logprobs[0].bytes == b"\xe4\xbd"


def test_the_unary_reply_gathers_them_per_choice():
    builder = ResponseBuilder("r", "ling")
    for e in events():
        builder.add(e)
    resp = builder.build(RequestTrace("r", "ling", "Generate", submitted_at=0.0))
    assert [t.token for t in resp.choices[0].logprobs] == ["Hel", "lo", "\ufffd"]
    assert resp.logprobs == resp.choices[0].logprobs
    assert resp.choices[0].text == "Hello" and resp.choices[0].reasoning_text == "hmm"


# ---- HTTP requests -------------------------------------------------------------------------------
def test_chat_logprobs_and_top_logprobs_map_onto_sampling():
    assert chat_request({**CHAT, "logprobs": True, "top_logprobs": 4})[0].sampling.logprobs == 4
    alone = chat_request({**CHAT, "logprobs": True})[0].sampling
    assert alone.HasField("logprobs") and alone.logprobs == 0
    for body in (CHAT, {**CHAT, "logprobs": False}):
        assert not chat_request(body)[0].sampling.HasField("logprobs")


def test_completion_logprobs_is_the_number_of_alternatives():
    assert completion_request({"model": "ling", "prompt": "p", "logprobs": 5})[0].sampling.logprobs == 5
    assert completion_request({"model": "ling", "prompt": "p", "logprobs": 0})[0].sampling.HasField(
        "logprobs"
    )
    assert not completion_request({"model": "ling", "prompt": "p"})[0].sampling.HasField("logprobs")


@pytest.mark.parametrize(
    ("read", "body", "param", "words"),
    [
        (chat_request, {**CHAT, "top_logprobs": 2}, "top_logprobs", "needs logprobs: true"),
        (chat_request, {**CHAT, "logprobs": False, "top_logprobs": 2}, "top_logprobs", "needs logprobs"),
        (chat_request, {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs", "[0, 20], got 21"),
        (chat_request, {**CHAT, "logprobs": 3}, "logprobs", "must be a boolean"),
        (completion_request, {"model": "ling", "prompt": "p", "logprobs": -1}, "logprobs", "got -1"),
        (completion_request, {"model": "ling", "prompt": "p", "logprobs": True}, "logprobs", "an integer"),
    ],
)
def test_bad_logprob_fields_are_400_naming_the_field(read, body, param, words):
    with pytest.raises(HttpError) as err:
        read(body)
    body = err.value.body()["error"]
    assert err.value.status == 400 and body["param"] == param and words in body["message"]


# ---- HTTP replies ----------------------------------------------------------------------------------
def built() -> pb.GenerateResponse:
    builder = ResponseBuilder("r", "ling")
    for e in events():
        builder.add(e)
    return builder.build(RequestTrace("r", "ling", "Generate", submitted_at=0.0))


def test_chat_reply_logprobs_have_openai_s_shape():
    (choice,) = chat_completion(built())["choices"]
    content = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None
    assert content[0] == {
        "token": "Hel",
        "logprob": -0.25,
        "bytes": list(b"Hel"),
        "top_logprobs": [
            {"token": "Hel", "logprob": -0.25, "bytes": list(b"Hel")},
            {"token": "He", "logprob": -1.5, "bytes": list(b"He")},
        ],
    }
    assert content[2]["bytes"] == [0xE4, 0xBD] and content[2]["logprob"] == -9999.0  # -inf, as OpenAI
    json.dumps(choice, allow_nan=False)
    plain = pb.GenerateResponse(choices=[pb.Choice(text="x")])
    assert chat_completion(plain)["choices"][0]["logprobs"] is None


def test_completion_reply_logprobs_have_openai_s_shape():
    (choice,) = completion(built())["choices"]
    assert choice["logprobs"] == {
        "tokens": ["Hel", "lo", "\ufffd"],
        "token_logprobs": [-0.25, -2.0, -9999.0],
        "top_logprobs": [
            {"Hel": -0.25, "He": -1.5},
            {"la": -0.5, "lo": -2.0},
            {"x": -0.125, "\ufffd": -9999.0},
        ],
        "text_offset": [0, 3, 5],
    }


def _choices(frames: list[bytes]) -> list[dict]:
    return [c for f in frames for c in json.loads(f[len(b"data: ") :])["choices"]]


def test_streamed_chunks_carry_the_logprobs_of_their_tokens():
    chunks = [c for e in events() for c in event_to_chunks("r", e)]
    chat = ChunkWriter("ling", chat=True, include_usage=False)
    got = _choices([f for c in chunks for f in chat.events(c)])
    assert got[0]["logprobs"] is None and got[0]["delta"]["reasoning_content"] == "hmm"
    assert [c["delta"].get("content") for c in got[1:4]] == ["Hel", None, "lo"]  # a logprob before its text
    streamed = [t for c in got if c["logprobs"] for t in c["logprobs"]["content"]]
    assert streamed == chat_completion(built())["choices"][0]["logprobs"]["content"]
    text = ChunkWriter("ling", chat=False, include_usage=False)
    got = _choices([f for c in chunks for f in text.events(c)])
    offsets = [o for c in got if c["logprobs"] for o in c["logprobs"]["text_offset"]]
    assert offsets == [0, 3, 5]  # counted on across chunks


# ---- batch items ------------------------------------------------------------------------------------
def test_a_batch_item_keeps_its_logprobs():
    from workers.batch import result_from_events

    result, _ = result_from_events(events(), "b", 0, "c", "ling")
    stored = json.loads(json.dumps(result.response))  # as the store keeps it
    resp = result_to_pb(type(result)(0, "c", response=stored)).response
    assert resp.logprobs == resp.choices[0].logprobs == built().logprobs
