"""Tests of the demo tokenizer and the Ling chat template, through transformers' AutoTokenizer."""

from __future__ import annotations

import json

import pytest

from bailing.demo.tokenizer import (
    SPECIAL_TOKENS,
    demo_tokenizer,
    ling_chat_template,
    train_demo_tokenizer,
    write_tokenizer_files,
)

SPEC_EXAMPLE = (
    "<role>SYSTEM</role>You are Ling.\ndetailed thinking off<|role_end|>"
    "<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>"
)
HEADER = "<role>SYSTEM</role>detailed thinking off<|role_end|>"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "今天天气很好，我们去公园散步吧。 北京欢迎你！",
    "emoji: 🙂🚀👍🏽 👨‍👩‍👧 and 🇫🇷",
    "naïve café, Straße, Zażółć gęślą jaźń, ¿Qué tal?",
    "def f(x):\n    return x ** 2  # tabs\tand  double  spaces\n\n",
    "  leading and trailing whitespace  ",
    "<think>\nreasoning\n</think>\n\nanswer",
    "",
]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(out, demo_tokenizer(), ling_chat_template(), eos_token="<|role_end|>")
    return transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)


def render(tok, messages, **kwargs) -> str:
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def test_training_is_deterministic():
    a, b = train_demo_tokenizer(), train_demo_tokenizer()
    assert a.to_str() == b.to_str()
    assert demo_tokenizer().to_str() == a.to_str()


def test_special_tokens_follow_the_bpe_vocabulary():
    tok = demo_tokenizer(vocab_size=1024)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(1024, 1024 + len(SPECIAL_TOKENS)))
    assert tok.get_vocab_size(with_added_tokens=True) == 1024 + len(SPECIAL_TOKENS)
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    assert added == set(SPECIAL_TOKENS) and "<think>" not in added and "</think>" not in added
    with pytest.raises(ValueError, match="vocab_size"):
        train_demo_tokenizer(vocab_size=100)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(text, hf_tokenizer):
    tok = demo_tokenizer()
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert hf_tokenizer.encode(text, add_special_tokens=False) == ids
    assert hf_tokenizer.decode(ids) == text


def test_hf_files_and_special_ids(hf_tokenizer, tmp_path):
    tok = demo_tokenizer()
    assert len(hf_tokenizer) == tok.get_vocab_size(with_added_tokens=True)
    assert hf_tokenizer.bos_token_id == tok.token_to_id("<|startoftext|>")
    assert hf_tokenizer.eos_token_id == tok.token_to_id("<|role_end|>")
    assert hf_tokenizer.pad_token_id == tok.token_to_id("<|endoftext|>")
    assert hf_tokenizer.encode("a<|role_end|>b", add_special_tokens=False)[1] == tok.token_to_id(
        "<|role_end|>"
    )
    assert len(hf_tokenizer.encode("<think>", add_special_tokens=False)) > 1  # ordinary text
    write_tokenizer_files(tmp_path, tok, "x", eos_token="<|endoftext|>")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["add_bos_token"], config["add_eos_token"]) == (False, False)
    role_end = config["added_tokens_decoder"][str(tok.token_to_id("<|role_end|>"))]
    assert role_end["content"] == "<|role_end|>" and role_end["special"] is True
    with pytest.raises(ValueError, match="<nope>"):
        write_tokenizer_files(tmp_path, tok, "x", eos_token="<nope>")


def test_spec_example_is_byte_exact(hf_tokenizer):
    messages = [{"role": "system", "content": "You are Ling."}, {"role": "user", "content": "Hi"}]
    assert render(hf_tokenizer, messages, add_generation_prompt=True) == SPEC_EXAMPLE
    ids = hf_tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert hf_tokenizer.decode(ids, skip_special_tokens=False) == SPEC_EXAMPLE


def test_plain_turns_parts_and_later_system(hf_tokenizer):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "Ling"}]},
        {"role": "assistant", "content": "Hi!"},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
    ]
    assert render(hf_tokenizer, messages) == (
        HEADER + "<role>HUMAN</role>Hello, Ling<|role_end|><role>ASSISTANT</role>Hi!<|role_end|>"
        "<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>2+2?<|role_end|>"
    )


def test_reasoning_kept_only_after_last_user_query(hf_tokenizer):
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "<think>\nr2\n</think>\n\na2"},
    ]
    expected = (
        HEADER + "<role>HUMAN</role>q1<|role_end|><role>ASSISTANT</role>a1<|role_end|>"
        "<role>HUMAN</role>q2<|role_end|><role>ASSISTANT</role>\n<think>\nr2\n</think>\n\na2<|role_end|>"
    )
    assert render(hf_tokenizer, messages) == expected
    messages[1] = {"role": "assistant", "content": "<think>\nr1\n</think>\n\na1"}
    assert render(hf_tokenizer, messages) == expected


def test_tools_calls_and_observations(hf_tokenizer):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "system", "content": "You are Ling."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "two calls",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "content": '{"c": 20}'},
        {"role": "tool", "content": '{"c": 25}'},
        {"role": "assistant", "content": "Both warm.", "reasoning_content": "compare"},
    ]
    out = render(hf_tokenizer, messages, tools=tools)
    head, body = out.split("detailed thinking off<|role_end|>")
    assert head.startswith("<role>SYSTEM</role>You are Ling.\n")
    assert "<tools>\n" + json.dumps(tools[0]) + "\n</tools>" in head and "<tool_call>" in head
    assert body == (
        "<role>HUMAN</role>Weather in Paris and Rome?<|role_end|><role>ASSISTANT</role>\n<think>\ntwo calls\n"
        '</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|role_end|>'
        '<role>OBSERVATION</role>\n<tool_response>\n{"c": 20}\n</tool_response>\n<tool_response>\n{"c": 25}\n'
        "</tool_response><|role_end|>"
        "<role>ASSISTANT</role>\n<think>\ncompare\n</think>\n\nBoth warm.<|role_end|>"
    )


def test_tool_response_user_turn_is_not_a_query(hf_tokenizer):
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "calling", "reasoning_content": "r"},
        {"role": "user", "content": "<tool_response>\nok\n</tool_response>"},
    ]
    assert "<think>\nr\n</think>\n\ncalling" in render(hf_tokenizer, messages)


def test_unknown_role_is_an_error(hf_tokenizer):
    with pytest.raises(Exception, match="unknown message role"):
        render(hf_tokenizer, [{"role": "narrator", "content": "x"}])
