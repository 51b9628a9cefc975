"""The OpenAI files and batches endpoints of a real gateway (real Redis, the real Celery batch queue; the
items' results written as a worker writes them): upload -> create -> retrieve -> output and error files
in input order, ids exact; listing, cancel, delete; owners under bearer tokens; bad input."""

from __future__ import annotations

import base64
import json

import httpx2
import pytest
import redis

from pipelines.batches import BatchItemJob, BatchStore, ItemResult, batch_queue_name

CHAT_URL = "/v1/chat/completions"


def line(custom_id: str, model: str, url: str = CHAT_URL, **body) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": custom_id}], "max_tokens": 4, **body}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(*lines: dict) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


@pytest.fixture()
def db(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def client_for(gw, token: str | None = None) -> httpx2.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx2.Client(base_url=f"http://127.0.0.1:{gw.gateway.http_port}", timeout=30, headers=headers)


@pytest.fixture()
def served(start_gateway, fake_worker, model):
    gw = start_gateway((model,), http_port=0, max_message_bytes=64 * 1024)
    fake_worker(model)
    with client_for(gw) as client:
        yield client, model


def upload(client, data: bytes, purpose: str = "batch") -> dict:
    resp = client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": purpose})
    assert resp.status_code == 200, resp.text
    return resp.json()


def queued_items(db, model: str) -> list[BatchItemJob]:
    raws = db.lrange(batch_queue_name(model), 0, -1)
    items = [BatchItemJob.from_dict(json.loads(base64.b64decode(json.loads(r)["body"]))[0][0]) for r in raws]
    return sorted(items, key=lambda i: i.index)


def answer(db, batch_id: str, index: int, custom_id: str, text: str) -> None:
    response = {
        "requestId": f"{batch_id}-{index}",
        "model": "m",
        "text": text,
        "finishReason": "stop",
        "usage": {"promptTokens": 3, "completionTokens": 1},
        "choices": [{"index": 0, "text": text, "finishReason": "stop", "completionTokens": 1}],
    }
    assert BatchStore(db).write_result(batch_id, ItemResult(index, custom_id, response=response))


def test_upload_create_poll_and_download_the_output_in_input_order(served, db):
    client, model = served
    data = jsonl(*(line(f"req-{i}", model) for i in range(3)))
    f = upload(client, data)
    assert f["object"] == "file" and f["bytes"] == len(data) and f["purpose"] == "batch"
    assert client.get(f"/v1/files/{f['id']}").json() == f
    assert client.get(f"/v1/files/{f['id']}/content").content == data

    body = {
        "input_file_id": f["id"],
        "endpoint": CHAT_URL,
        "completion_window": "24h",
        "metadata": {"k": "v"},
    }
    batch = client.post("/v1/batches", json=body).json()
    assert batch["object"] == "batch" and batch["status"] in ("validating", "in_progress")
    assert (batch["input_file_id"], batch["endpoint"], batch["completion_window"]) == (
        f["id"],
        CHAT_URL,
        "24h",
    )
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["metadata"] == {"k": "v"} and batch["output_file_id"] is None

    items = queued_items(db, model)
    assert [(i.index, i.custom_id) for i in items] == [(0, "req-0"), (1, "req-1"), (2, "req-2")]
    assert items[1].job.messages[0].parts[0].text == "req-1" and items[1].job.sampling.max_tokens == 4
    for i in (2, 0):  # out of order: the output file is in input order all the same
        answer(db, batch["id"], i, f"req-{i}", f"answer {i}")
    error = {"code": "INVALID_ARGUMENT", "message": "too long"}
    assert BatchStore(db).write_result(batch["id"], ItemResult(1, "req-1", error=error))

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed" and done["request_counts"] == {
        "total": 3,
        "completed": 2,
        "failed": 1,
    }
    assert done["completed_at"] and done["output_file_id"] and done["error_file_id"]
    out = [
        json.loads(x) for x in client.get(f"/v1/files/{done['output_file_id']}/content").content.splitlines()
    ]
    assert [x["custom_id"] for x in out] == ["req-0", "req-2"]
    assert out[0]["id"] == f"batch_req_{batch['id'].removeprefix('batch_')}_0" and out[0]["error"] is None
    assert out[1]["response"]["status_code"] == 200
    assert out[1]["response"]["body"]["choices"][0]["message"]["content"] == "answer 2"
    assert out[1]["response"]["body"]["object"] == "chat.completion"
    (err,) = [
        json.loads(x) for x in client.get(f"/v1/files/{done['error_file_id']}/content").content.splitlines()
    ]
    assert err["custom_id"] == "req-1" and err["error"] == {"code": "invalid_argument", "message": "too long"}
    assert err["response"]["status_code"] == 400
    meta = client.get(f"/v1/files/{done['output_file_id']}").json()
    assert meta["purpose"] == "batch_output" and meta["bytes"] == len(
        client.get(f"/v1/files/{done['output_file_id']}/content").content
    )
    listed = client.get("/v1/batches", params={"limit": 100}).json()
    assert done["id"] in [b["id"] for b in listed["data"]]


def test_completions_batches_render_text_completions(served, db):
    client, model = served
    f = upload(client, jsonl({"custom_id": "c", "method": "POST", "url": "/v1/completions",
                              "body": {"model": model, "prompt": "once"}}))  # fmt: skip
    batch = client.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/completions"}).json()
    (item,) = queued_items(db, model)
    assert item.job.prompt == "once" and item.job.sampling.max_tokens == 16  # OpenAI's completions default
    answer(db, batch["id"], 0, "c", "upon")
    done = client.get(f"/v1/batches/{batch['id']}").json()
    (out,) = [
        json.loads(x) for x in client.get(f"/v1/files/{done['output_file_id']}/content").content.splitlines()
    ]
    assert out["response"]["body"]["object"] == "text_completion"
    assert out["response"]["body"]["choices"][0]["text"] == "upon"


def test_cancel_list_and_delete(start_gateway, fake_worker, model):
    token = f"own-token-{model}"  # this test's own token: its listings hold only its own files
    gw = start_gateway((model,), http_port=0, api_tokens=(token,))
    fake_worker(model)
    client = client_for(gw, token)
    f = upload(client, jsonl(line("a", model), line("b", model)))
    batch = client.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": CHAT_URL}).json()
    cancelled = client.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert cancelled["status"] in ("cancelling", "cancelled")
    assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "cancelled"
    second = upload(client, jsonl(line("c", model)))
    files = client.get("/v1/files", params={"limit": 1}).json()
    assert [x["id"] for x in files["data"]] == [second["id"]] and files["has_more"] is True
    page = client.get("/v1/files", params={"limit": 1, "after": second["id"]}).json()
    assert [x["id"] for x in page["data"]] == [f["id"]]
    assert client.delete(f"/v1/files/{f['id']}").json() == {"id": f["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{f['id']}").status_code == 404
    assert [x["id"] for x in client.get("/v1/files").json()["data"]] == [second["id"]]
    client.close()


def error_of(resp, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in err["message"]
    assert all(w in err["message"] for w in words), err["message"]
    return err


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        (b"{not json\n", ["line 1", "not valid JSON"]),
        (b"[1]\n", ["line 1", "JSON object"]),
        (b"", ["no requests"]),
        (b"\xff\xfe\n", ["UTF-8"]),
        (jsonl({"custom_id": "a", "method": "GET", "url": CHAT_URL, "body": {}}), ["method"]),
        (jsonl(line("a", "M", url="/v1/embeddings")), ["url must be"]),
        (jsonl(line("a", "M"), line("b", "other")), ["line 2", "one model"]),
        (jsonl(line("a", "M", stream=True)), ["stream must be false"]),
        (jsonl(line("a", "M", max_tokens="x")), ["line 1", "max_tokens must be an integer"]),
        (jsonl(line("a", "M"), line("a", "M")), ["custom_id"]),
        (jsonl(line("a", "M", temperature=-3)), ["temperature"]),
    ],
)
def test_bad_input_files_are_refused_at_create(served, lines, words):
    client, model = served
    f = upload(client, lines.replace(b'"M"', json.dumps(model).encode()))
    error_of(client.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": CHAT_URL}), 400, *words)


def test_bad_requests_get_their_status(served):
    client, model = served
    f = upload(client, jsonl(line("a", model)))
    create = {"input_file_id": f["id"], "endpoint": CHAT_URL}
    error_of(client.post("/v1/batches", json={**create, "endpoint": "/v1/embeddings"}), 400, "endpoint")
    error_of(
        client.post("/v1/batches", json={**create, "completion_window": "soon"}), 400, "completion_window"
    )
    error_of(client.post("/v1/batches", json={**create, "input_file_id": "file-nope"}), 404, "file-nope")
    error_of(client.post("/v1/batches", json={"endpoint": CHAT_URL}), 400, "input_file_id is required")
    error_of(client.get("/v1/batches/batch_nope"), 404, "batch_nope")
    error_of(client.post("/v1/batches/batch_nope/cancel"), 404, "batch_nope")
    error_of(client.get("/v1/files/file-batch_nope-output/content"), 404, "batch_nope")
    error_of(client.get("/v1/files", params={"limit": "0"}), 400, "limit")
    error_of(
        client.post("/v1/files", files={"file": ("a", b"x")}, data={"purpose": "fine-tune"}), 400, "purpose"
    )
    error_of(
        client.post("/v1/files", data={"purpose": "batch"}, files={"x": ("a", b"1")}), 400, "file is required"
    )
    error_of(
        client.post("/v1/files", files={"file": ("a", b"x" * 70_000)}, data={"purpose": "batch"}), 413, "over"
    )
    error_of(client.delete("/v1/files/file-batch_x-output"), 400, "cannot be deleted")
    error_of(client.get("/v1/nothing"), 404, "/v1/nothing")
    assert client.post("/v1/batches", json=create).status_code == 200  # still serving


def test_files_and_batches_belong_to_their_token(start_gateway, fake_worker, model):
    gw = start_gateway((model,), http_port=0, api_tokens=("alice-token-0123456789", "bob-token-0123456789"))
    fake_worker(model)
    with (
        client_for(gw, "alice-token-0123456789") as alice,
        client_for(gw, "bob-token-0123456789") as bob,
        client_for(gw) as nobody,
    ):
        f = upload(alice, jsonl(line("a", model)))
        batch = alice.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": CHAT_URL}).json()
        for path in (f"/v1/files/{f['id']}", f"/v1/files/{f['id']}/content", f"/v1/batches/{batch['id']}"):
            error_of(bob.get(path), 404, "not found")
            error_of(nobody.get(path), 401, "authorization")
        assert bob.get("/v1/files").json()["data"] == [] and bob.get("/v1/batches").json()["data"] == []
        error_of(
            bob.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": CHAT_URL}), 404, "not found"
        )
        assert [x["id"] for x in alice.get("/v1/files").json()["data"]] == [f["id"]]
