"""The grammar of a job's output (pipelines.structured), checked by what it accepts on the demo tokenizer."""

from __future__ import annotations

import json

import pytest
from llguidance import LLMatcher

from engine.errors import RequestError
from engine.structured.structured_output import StructuredOutput
from engine.tokenizer import load_tokenizer
from models.family import get_family
from pipelines.protocol import GenerateJob, ResponseFormat, Tool, ToolChoice
from pipelines.structured import job_grammar, parses_tool_calls, wants_grammar

WEATHER = Tool("get_weather", "", json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}))
TIME = Tool("get_time", "", json.dumps({"type": "object", "properties": {"tz": {"enum": ["utc", "cet"]}}}))
SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})


@pytest.fixture(scope="module")
def structured(demo_ling):
    tok = load_tokenizer(demo_ling)
    return tok, StructuredOutput(tok, 2176, {tok.convert_tokens_to_ids("<|role_end|>")})


def job(**kw) -> GenerateJob:
    return GenerateJob(request_id="r", model="ling", messages=(), **kw)


def accepts(structured, grammar: str, text: str) -> bool:
    tok, so = structured
    so.check(grammar)
    m = LLMatcher(so.tokenizer, grammar, log_level=0)
    return m.consume_tokens(tok.encode(text, add_special_tokens=False)) and m.is_accepting()


CALL_F = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
CALL_T = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "utc"}}\n</tool_call>'


def test_free_output_has_no_grammar():
    ling = get_family("ling")
    assert job_grammar(job(), ling) is None
    assert job_grammar(job(response_format=ResponseFormat("text")), ling) is None
    auto = job(tools=(WEATHER,))
    assert job_grammar(auto, ling) is None and parses_tool_calls(auto) and not wants_grammar(auto)
    off = job(tools=(WEATHER,), tool_choice=ToolChoice("none"))
    assert not parses_tool_calls(off)


def test_json_schema_compact_in_the_templates_style(structured):
    g = job_grammar(job(response_format=ResponseFormat("json_schema", SCHEMA)), get_family("ling"))
    assert accepts(structured, g, '{"a": 5}')
    assert not accepts(structured, g, '{"a":5}')  # separators as the chat template writes JSON
    assert not accepts(structured, g, '{"a": "x"}') and not accepts(structured, g, "{}")


def test_json_object_and_regex(structured):
    ling = get_family("ling")
    g = job_grammar(job(response_format=ResponseFormat("json_object")), ling)
    assert accepts(structured, g, '{"x": [1, 2]}') and not accepts(structured, g, "[1]")
    g = job_grammar(job(response_format=ResponseFormat("regex", pattern=r"[0-9]{3}/[a-z]+")), ling)
    assert accepts(structured, g, "123/abc") and not accepts(structured, g, "12/abc")


def test_required_calls_in_the_familys_format(structured):
    g = job_grammar(job(tools=(WEATHER, TIME), tool_choice=ToolChoice("required")), get_family("ling"))
    assert accepts(structured, g, CALL_F) and accepts(structured, g, CALL_T)
    assert accepts(structured, g, CALL_F + "\n" + CALL_T)  # parallel calls
    assert not accepts(structured, g, "Sure! " + CALL_F)
    assert not accepts(structured, g, CALL_F.replace('"Oslo"', "3"))  # arguments follow the schema
    one = job(tools=(WEATHER, TIME), tool_choice=ToolChoice("required"), parallel_tool_calls=False)
    assert not accepts(structured, job_grammar(one, get_family("ling")), CALL_F + "\n" + CALL_T)


def test_named_function_and_auto_with_a_format(structured):
    ling = get_family("ling")
    named = job(tools=(WEATHER, TIME), tool_choice=ToolChoice("function", "get_time"))
    assert accepts(structured, job_grammar(named, ling), CALL_T)
    assert not accepts(structured, job_grammar(named, ling), CALL_F)
    both = job(tools=(WEATHER,), response_format=ResponseFormat("json_schema", SCHEMA))
    g = job_grammar(both, ling)
    assert accepts(structured, g, '{"a": 1}') and accepts(structured, g, CALL_F)


def test_after_a_think_block_leading_space_is_allowed(structured):
    g = job_grammar(
        job(response_format=ResponseFormat("json_object")), get_family("ring"), leading_space=True
    )
    assert accepts(structured, g, '\n\n{"k": 1}') and accepts(structured, g, '{"k": 1}')


def test_tools_for_a_family_without_calls():
    with pytest.raises(RequestError, match="does not take tools"):
        job_grammar(job(tools=(WEATHER,), tool_choice=ToolChoice("required")), get_family("ming"))
