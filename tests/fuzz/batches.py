"""Hypothesis strategies of the Jobs service's requests: CreateBatchRequest with inline items (chat,
image and speech requests, several kinds set at once, repeated or empty custom ids) or JSONL (lines
whose JSON is broken, nested thousands deep, of the wrong type where a string or object belongs, not
UTF-8, or blank), odd completion windows and metadata; Get / Cancel / GetBatchResults by ids that
exist, never did, or are empty; ListBatches with any limit.

`KNOWN_BATCH` in an id is replaced at run time by the id of a batch the run created (tests/fuzz/cases.py).
"""

from __future__ import annotations

import json

from google.protobuf import json_format
from hypothesis import strategies as st

from gateway.api import pb
from tests.fuzz.fields import INT32_EDGES, Target, doubles, huge_text, int32s, mostly, texts
from tests.fuzz.requests import generate_requests, image_requests, speech_requests

KNOWN_BATCH = "@known-batch"
ITEM_KINDS = ("request", "image_request", "speech_request")


@st.composite
def batch_items(draw, target: Target) -> pb.BatchItem:
    kinds = draw(mostly(st.sampled_from(ITEM_KINDS).map(lambda k: [k]), st.sets(st.sampled_from(ITEM_KINDS))))
    item = pb.BatchItem(custom_id=draw(mostly(st.text(min_size=1, max_size=8), st.sampled_from(("", "dup")))))
    strategies = {
        "request": generate_requests(target),
        "image_request": image_requests(target),
        "speech_request": speech_requests(target),
    }
    for kind in kinds:
        request = draw(strategies[kind])
        request.model = draw(st.sampled_from(("", request.model)))  # "" = the batch's model
        getattr(item, kind).CopyFrom(request)
    return item


# A JSON line's body where protobuf's JSON mapping wants something else, or nonsense around it
WRONG_BODIES = (
    {"sampling": {"max_tokens": "many"}},
    {"sampling": {"max_tokens": 1e400}},
    {"sampling": {"max_tokens": 99999999999999999999}},
    {"sampling": {"temperature": "NaN"}},
    {"sampling": {"seed": "-1e30"}},
    {"messages": "hello"},
    {"messages": [{"role": 1, "content": [{"text": ["a"]}]}]},
    {"messages": [{"role": "user", "content": [{"image": {"data": "not base64!"}}]}]},
    {"prompt": None},
    {"prompt": {"nested": True}},
    {"prompt": "hi", "unknown_field": 1},
    {"prompt": "hi", "priority": 2**40},
    {"prompt": "hi", "speech": {}},
    {"width": "wide", "prompt": "x"},
)


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def jsonl_lines(draw, target: Target) -> bytes:
    kind = draw(st.sampled_from(("valid", "valid", "valid", "wrong body", "wrong shape", "broken", "deep")))
    custom_id = draw(mostly(st.text(min_size=1, max_size=6), st.sampled_from(("", "dup"))))
    if kind == "valid":
        method = draw(st.sampled_from(("Generate", "GenerateImage", "SynthesizeSpeech")))
        strategy = {"Generate": generate_requests, "GenerateImage": image_requests}.get(
            method, speech_requests
        )
        body = json_format.MessageToDict(draw(strategy(target)))
        line = {"custom_id": custom_id, "body": body}
        if method != "Generate" or draw(st.booleans()):
            line["method"] = method
        return json.dumps(line).encode()
    if kind == "wrong body":
        return json.dumps({"custom_id": custom_id, "body": draw(st.sampled_from(WRONG_BODIES))}).encode()
    if kind == "wrong shape":
        shapes = (
            [custom_id],
            {"custom_id": 7, "body": {"prompt": "x"}},
            {"custom_id": custom_id, "body": [1, 2]},
            {"custom_id": custom_id, "body": {"prompt": "x"}, "method": 3},
            {"custom_id": custom_id, "body": {"prompt": "x"}, "method": "Transcribe"},
            {"custom_id": custom_id, "body": {"prompt": "x"}, "extra": {}},
            "a string",
            None,
        )
        return json.dumps(draw(st.sampled_from(shapes))).encode()
    if kind == "deep":
        depth = draw(st.sampled_from((100, 1000, 100_000)))
        return f'{{"custom_id": "deep", "body": {{"prompt": "x", "p": {deep_json(depth)}}}}}'.encode()
    text = st.one_of(st.text(max_size=64), st.sampled_from(("{", "   ", "NaN", '{"custom_id": "x"')))
    return draw(mostly(text.map(str.encode), st.binary(max_size=64), odds=8))  # bytes: rarely UTF-8


@st.composite
def create_batch_requests(draw, target: Target) -> pb.CreateBatchRequest:
    shape = draw(mostly(st.sampled_from(("items", "jsonl")), st.sampled_from(("both", "neither"))))
    items = draw(st.lists(batch_items(target), min_size=1, max_size=3)) if shape in ("items", "both") else []
    jsonl = b""
    if shape in ("jsonl", "both"):
        lines = draw(st.lists(jsonl_lines(target), min_size=1, max_size=3))
        jsonl = draw(st.sampled_from((b"\n", b"\r\n", b"\n\n"))).join(lines)
    small = st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3)
    metadata = draw(mostly(small, st.dictionaries(huge_text(100, 2000), huge_text(100, 20000), max_size=2)))
    return pb.CreateBatchRequest(
        model=draw(mostly(st.sampled_from(target.served), texts())),
        items=items,
        jsonl=jsonl,
        completion_window_s=draw(mostly(st.sampled_from((0.0, 3600.0)), doubles(0.0, 1e6))),
        skip_invalid_items=draw(st.booleans()),
        metadata=metadata,
    )


def batch_ids() -> st.SearchStrategy[str]:
    return mostly(
        st.just(KNOWN_BATCH),
        st.one_of(st.just(""), st.text(max_size=20), st.just("batch_" + "0" * 32), huge_text(200, 3000)),
        odds=2,
    )


def list_batches_requests() -> st.SearchStrategy[pb.ListBatchesRequest]:
    limits = int32s(st.sampled_from((0, 1, 10, 100, 1001, *INT32_EDGES)))
    return st.builds(lambda n: pb.ListBatchesRequest(limit=n), limits)
