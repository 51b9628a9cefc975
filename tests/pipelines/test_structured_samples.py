"""The random-weight demo models, which write garbage unless held to a grammar, answer structured requests
through the text pipeline: 100 seeded samples per schema over 10 schemas all validate, regex answers
match fully, forced tool calls validate, and Ring reasons freely before a constrained answer."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import NamedTuple

import jsonschema
import pytest

from engine import LLM
from models.family import get_family
from pipelines import text
from pipelines.protocol import ChatMessage, GenerateJob, Part, ResponseFormat, Sampling, Tool, ToolChoice

SAMPLES = 100
S = {"type": "string", "maxLength": 6}
SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9999}, "nick": S},
                "required": ["id", "nick"],
            },
            "active": {"type": "boolean"},
        },
        "required": ["user", "active"],
    },
    "enum_array": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"enum": ["red", "green", "blue"]},
                "minItems": 1,
                "maxItems": 4,
            },
            "priority": {"enum": ["low", "mid", "high"]},
        },
        "required": ["tags", "priority"],
    },
    "bounded_numbers": {
        "type": "object",
        "properties": {
            "celsius": {"type": "number", "minimum": -40, "maximum": 60},
            "humidity": {"type": "integer", "exclusiveMinimum": 0, "maximum": 100},
        },
        "required": ["celsius", "humidity"],
    },
    "object_array": {
        "type": "object",
        "properties": {
            "points": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "x": {"type": "integer", "minimum": -9, "maximum": 9},
                        "y": {"type": "integer", "minimum": -9, "maximum": 9},
                    },
                    "required": ["x", "y"],
                },
            }
        },
        "required": ["points"],
    },
    "top_level_array": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 2,
        "maxItems": 5,
    },
    "any_of": {
        "type": "object",
        "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, S]}},
        "required": ["value"],
    },
    "const_and_optional": {
        "type": "object",
        "properties": {
            "kind": {"const": "point"},
            "label": S,
            "weight": {"type": "integer", "maximum": 5, "minimum": 0},
        },
        "required": ["kind"],
        "additionalProperties": False,
    },
    "patterns": {
        "type": "object",
        "properties": {
            "date": {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]$"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
        },
        "required": ["date", "code"],
    },
    "nullable_deep": {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {
                    "b": {"type": "object", "properties": {"c": {"enum": [1, 2, 3]}}, "required": ["c"]}
                },
                "required": ["b"],
            },
            "note": {"type": ["string", "null"], "maxLength": 4},
        },
        "required": ["a", "note"],
    },
}
WEATHER = {
    "type": "object",
    "properties": {"city": S, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIMEZONE = {"type": "object", "properties": {"tz": {"enum": ["utc", "cet", "pst"]}}, "required": ["tz"]}
TOOLS = (
    Tool("get_weather", "Weather in a city", json.dumps(WEATHER)),
    Tool("get_time", "", json.dumps(TIMEZONE)),
)


@pytest.fixture(scope="module")
def ling(demo_ling):
    return LLM(demo_ling, max_num_seqs=SAMPLES)


def chat_job(seed: int, max_tokens: int = 160, **kw) -> GenerateJob:
    return GenerateJob(
        request_id=f"r{seed}",
        model="demo",
        messages=(ChatMessage("user", (Part("text", "Answer please."),)),),
        sampling=Sampling(temperature=1.0, seed=seed, max_tokens=max_tokens),
        **kw,
    )


class Reply(NamedTuple):
    reasoning: str
    answer: str
    calls: list
    finish: str
    reasoning_tokens: int


def run(llm: LLM, family: str, jobs: list[GenerateJob]) -> list[Reply]:
    """Each job's reply as the worker's presenter reads it."""
    prepared = [text.prepare(j, llm.engine, get_family(family), {}) for j in jobs]
    outs = llm.generate([p.prompt_ids for p in prepared], [p.params for p in prepared])
    results = []
    for p, out in zip(prepared, outs, strict=True):
        deltas = p.presenter.deltas(dataclasses.replace(out, new_text=out.text))
        results.append(
            Reply(
                "".join(d.reasoning for d in deltas),
                "".join(d.text for d in deltas),
                [c for d in deltas for c in d.tool_calls],
                p.presenter.finish_reason(out),
                p.presenter.usage(out).reasoning_tokens,
            )
        )
    return results


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_seeded_sample_validates(ling, name):
    fmt = ResponseFormat("json_schema", json.dumps(SCHEMAS[name]), name)
    results = run(ling, "ling", [chat_job(seed, response_format=fmt) for seed in range(SAMPLES)])
    for _, answer, _, finish, _ in results:
        assert finish == "stop", (answer, finish)
        jsonschema.validate(json.loads(answer), SCHEMAS[name])
    assert len({r[1] for r in results}) > SAMPLES // 4  # seeded samples, not one fixed answer


def test_regex_answers_match_fully(ling):
    pattern = r"(yes|no), [a-z]{2,8} [0-9]{1,3}!"
    fmt = ResponseFormat("regex", pattern=pattern)
    for _, answer, _, finish, _ in run(
        ling, "ling", [chat_job(s, response_format=fmt) for s in range(SAMPLES)]
    ):
        assert finish == "stop" and re.fullmatch(pattern, answer), answer


def test_required_tool_calls_validate(ling):
    jobs = [
        chat_job(s, tools=TOOLS, tool_choice=ToolChoice("required"), parallel_tool_calls=False)
        for s in range(SAMPLES)
    ]
    schemas = {"get_weather": WEATHER, "get_time": TIMEZONE}
    names = set()
    for _, answer, calls, finish, _ in run(ling, "ling", jobs):
        assert finish == "tool_calls" and answer == "" and len(calls) == 1, (answer, calls, finish)
        jsonschema.validate(json.loads(calls[0].arguments), schemas[calls[0].name])
        names.add(calls[0].name)
    assert names == set(schemas)


def test_named_function_is_the_one_called(ling):
    choice = ToolChoice("function", "get_time")
    jobs = [chat_job(s, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False) for s in range(8)]
    for _, _, calls, finish, _ in run(ling, "ling", jobs):
        assert finish == "tool_calls" and calls and {c.name for c in calls} == {"get_time"}


def test_ring_reasons_freely_then_answers_in_the_schema(demo_ring):
    ring = LLM(demo_ring, max_num_seqs=16)
    fmt = ResponseFormat("json_schema", json.dumps(SCHEMAS["flat"]))
    jobs = [chat_job(s, max_tokens=120, response_format=fmt, thinking_budget=24) for s in range(16)]
    for reasoning, answer, _, finish, reasoning_tokens in run(ring, "ring", jobs):
        assert finish == "stop", (reasoning, answer)
        assert 0 < reasoning_tokens <= 24  # the thinking budget still holds
        assert reasoning.strip()  # free text (the random model's), not JSON
        jsonschema.validate(json.loads(answer), SCHEMAS["flat"])


@pytest.fixture(scope="module")
def llada2(demo_llada2):
    return LLM(demo_llada2, max_num_seqs=16)


@pytest.mark.parametrize("decoder", ["llada2", "threshold"])
def test_llada2_blocks_follow_the_schema(llada2, decoder):
    """Block diffusion held to a grammar: every committed token is allowed where it lands, and a run of
    positions the decoder chose is still committed in one step (a loose threshold chooses many)."""
    options = {"decoder": decoder, "threshold": 0.0 if decoder == "threshold" else 0.95, "block_length": 8}
    names = ("nested", "enum_array", "object_array")
    jobs = [
        chat_job(s, response_format=ResponseFormat("json_schema", json.dumps(SCHEMAS[n])), diffusion=options)
        for n in names
        for s in range(8)
    ]
    prepared = [text.prepare(j, llada2.engine, get_family("llada2"), {}) for j in jobs]
    outs = llada2.generate([p.prompt_ids for p in prepared], [p.params for p in prepared])
    for i, (p, out) in enumerate(zip(prepared, outs, strict=True)):
        assert p.presenter.finish_reason(out) == "stop", (out.text, out.finish_reason, out.stop_reason)
        jsonschema.validate(json.loads(out.text), SCHEMAS[names[i // 8]])
    if decoder == "threshold":
        assert max(len(c) for out in outs for c in out.step_commits) > 1


def test_llada2_forced_tool_call_validates(llada2):
    required = ToolChoice("required")
    jobs = [chat_job(s, tools=TOOLS, tool_choice=required, parallel_tool_calls=False) for s in range(8)]
    schemas = {"get_weather": WEATHER, "get_time": TIMEZONE}
    for _, answer, calls, finish, _ in run(llada2, "llada2", jobs):
        assert finish == "tool_calls" and answer == "" and len(calls) == 1, (answer, calls, finish)
        jsonschema.validate(json.loads(calls[0].arguments), schemas[calls[0].name])
