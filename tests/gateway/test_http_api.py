"""The OpenAI-compatible HTTP API of a real gateway (real Redis, a FakeWorker answering in Redis): bad input
gets OpenAI's error object with the right status and the gateway keeps serving; auth; a disconnect
cancels the request; streams and replies have OpenAI's shapes."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time

import pytest
import redis

from pipelines.protocol import EventType, Usage, cancel_key

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class Http:
    """Plain HTTP/1.1 calls to the gateway's HTTP port (stdlib: what is on the wire is what is tested)."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port, self.token = port, token

    def call(self, method: str, path: str, body: object = None, raw: bytes | None = None, **headers: str):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        heads = {"content-type": "application/json", **headers}
        if self.token:
            heads["authorization"] = f"Bearer {self.token}"
        conn.request(method, path, body=data, headers=heads)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        return resp.status, payload

    def json(self, method: str, path: str, body: object = None, **kw):
        status, payload = self.call(method, path, body, **kw)
        return status, json.loads(payload)


@pytest.fixture()
def served(start_gateway, fake_worker, model):
    gw = start_gateway((model,), http_port=0, max_message_bytes=64 * 1024)
    return Http(gw.gateway.http_port), fake_worker(model), model


def _answer_next(worker, text: str = "hello world", reasoning: str = "") -> threading.Thread:
    """Answer the next job the gateway queues for the worker (on a thread: the HTTP call blocks)."""

    def run() -> None:
        job = worker.take_job()
        worker.answer(job["request_id"], text, reasoning)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _error(status_payload: tuple[int, dict], status: int, *words: str, param: str | None = None) -> dict:
    got, body = status_payload
    assert got == status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert all(w in err["message"] for w in words), err["message"]
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def test_chat_reply_has_openai_shape(served):
    client, worker, model = served
    t = _answer_next(worker, "hello world", reasoning="thinking")
    status, body = client.json("POST", "/v1/chat/completions", {"model": model, **CHAT})
    t.join()
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == model
    (choice,) = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "hello world ",
        "reasoning_content": "thinking",
    }
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["total_tokens"] == 3 + 2


def test_stream_is_server_sent_events_ending_in_done(served):
    client, worker, model = served
    t = _answer_next(worker, "a b c")
    body = {"model": model, **CHAT, "stream": True, "stream_options": {"include_usage": True}}
    status, payload = client.call("POST", "/v1/chat/completions", body)
    t.join()
    assert status == 200
    frames = [line[len(b"data: ") :] for line in payload.split(b"\n\n") if line]
    assert frames[-1] == b"[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content", "") for d in deltas) == "a b c "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "status", "words", "param"),
    [
        ({"messages": "hi"}, 400, ["messages must be an array"], "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, ["content must be"], "messages[0].content"),
        (
            {"messages": [{"role": "wizard", "content": "x"}]},
            400,
            ["role must be one of"],
            "messages[0].role",
        ),
        ({**CHAT, "max_tokens": "8"}, 400, ["max_tokens must be an integer"], "max_tokens"),
        ({**CHAT, "temperature": -1}, 400, ["temperature"], None),
        ({**CHAT, "top_logprobs": 2}, 400, ["top_logprobs needs logprobs: true"], "top_logprobs"),
        ({**CHAT, "stop": [1]}, 400, ["stop must be"], "stop"),
        ({**CHAT, "stream_options": {"include_usage": True}}, 400, ["stream_options needs stream"], None),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}],
                    }
                ]
            },
            400,
            ["data URL"],
            "messages[0].content[0].image_url.url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}],
                    }
                ]
            },
            400,
            ["not valid base64"],
            None,
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "hologram"}]}]},
            400,
            ["type must be one of"],
            None,
        ),
        (
            {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 7}}}},
            400,
            ["schema"],
            None,
        ),
    ],
)
def test_bad_chat_requests_get_the_openai_error_and_the_gateway_keeps_serving(
    served, body, status, words, param
):
    client, worker, model = served
    _error(client.json("POST", "/v1/chat/completions", {"model": model, **body}), status, *words, param=param)
    if "stream_options" not in body:  # refused streamed too, with its status (not a 200 and an error event)
        streamed = {"model": model, **body, "stream": True}
        _error(client.json("POST", "/v1/chat/completions", streamed), status, *words)
    t = _answer_next(worker)
    assert client.json("POST", "/v1/chat/completions", {"model": model, **CHAT})[0] == 200
    t.join()


def test_bad_media_bytes_are_refused_before_any_work(served):
    client, _, model = served
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{junk}"}}
    body = {"model": model, "messages": [{"role": "user", "content": [part]}]}
    _error(client.json("POST", "/v1/chat/completions", body), 400)


def test_body_problems_have_their_status(served):
    client, _, model = served
    _error(client.json("POST", "/v1/chat/completions", raw=b"{nope"), 400, "not valid JSON")
    _error(client.json("POST", "/v1/chat/completions", [1, 2]), 400, "must be a JSON object")
    _error(client.json("POST", "/v1/chat/completions", {"model": "nope", **CHAT}), 404, "'nope'")
    _error(
        client.json("POST", "/v1/chat/completions", {"model": "nope", **CHAT, "stream": True}), 404, "'nope'"
    )
    big = {"model": model, "messages": [{"role": "user", "content": "x" * 70_000}]}
    _error(client.json("POST", "/v1/chat/completions", big), 413, "over 65536 bytes")
    _error(client.json("GET", "/v1/nothing-here"), 404)
    _error(client.json("GET", "/v1/chat/completions"), 405)
    _error(
        client.json("POST", "/v1/completions", {"model": model, "prompt": ["a", "b"]}),
        400,
        "prompt",
        param="prompt",
    )
    _error(client.json("POST", "/v1/completions", {"model": model, "prompt": "a", "echo": True}), 400, "echo")


def test_no_live_worker_is_503(start_gateway, model):
    gw = start_gateway((model,), http_port=0)
    _error(
        Http(gw.gateway.http_port).json("POST", "/v1/chat/completions", {"model": model, **CHAT}),
        503,
        "no live worker",
    )


def test_bearer_tokens_guard_every_endpoint(start_gateway, fake_worker, model):
    gw = start_gateway((model,), http_port=0, api_tokens=("sesame",))
    worker = fake_worker(model)
    port = gw.gateway.http_port
    for token in (None, "wrong"):
        client = Http(port, token)
        _error(client.json("GET", "/v1/models"), 401)
        _error(client.json("POST", "/v1/chat/completions", {"model": model, **CHAT}), 401)
    good = Http(port, "sesame")
    status, listing = good.json("GET", "/v1/models")
    assert status == 200 and [m["id"] for m in listing["data"]] == [model]
    t = _answer_next(worker)
    assert good.json("POST", "/v1/chat/completions", {"model": model, **CHAT})[0] == 200
    t.join()


def test_a_client_that_disconnects_cancels_its_request(served, redis_url):
    client, worker, model = served
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    body = {"model": model, **CHAT, "stream": True, "request_id": "http-gone-1"}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    job = worker.take_job()
    worker.emit(job["request_id"], EventType.STARTED)
    worker.emit(job["request_id"], EventType.DELTA, text="one ")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    db = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while not db.exists(cancel_key("http-gone-1")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.exists(cancel_key("http-gone-1")), "the disconnect did not cancel the request"
    worker.emit(job["request_id"], EventType.DONE, finish_reason="cancelled", usage=Usage())


def test_a_unary_client_that_disconnects_cancels_its_request(served, redis_url):
    client, worker, model = served
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    body = {"model": model, **CHAT, "request_id": "http-gone-2"}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    worker.take_job()  # queued, never answered: the client gives up waiting
    conn.sock.close()
    conn.close()
    db = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while not db.exists(cancel_key("http-gone-2")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.exists(cancel_key("http-gone-2")), "the disconnect did not cancel the request"


def test_chat_fields_map_onto_the_grpc_request():
    from gateway.http_api.requests import chat_request, completion_request

    req, stream, usage = chat_request(
        {**CHAT, "model": "m", "max_completion_tokens": 5, "stop": "x", "seed": 3, "top_k": 4,
         "chat_template_kwargs": {"enable_thinking": False}, "tool_choice": {"function": {"name": "f"}}}
    )  # fmt: skip
    assert (req.sampling.max_tokens, list(req.sampling.stop), req.sampling.seed, req.sampling.top_k) == (
        5, ["x"], 3, 4,
    )  # fmt: skip
    assert req.reasoning.enable_thinking is False and not (stream or usage)
    assert (req.tool_choice.mode, req.tool_choice.function_name) == ("function", "f")
    assert chat_request({**CHAT, "model": "m"})[0].sampling.max_tokens == 8
    # completions: a prompt in a list of one, and OpenAI's default of 16 tokens
    assert completion_request({"model": "m", "prompt": ["p"]})[0].sampling.max_tokens == 16
