"""Text in and out: encoding, incremental detokenisation, stop strings, chat templates."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def llm(demo_ling):
    return LLM(demo_ling)


GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize(
    "text", ["你好，世界！ Ünïcödé 🎉🎉 done", "plain ascii, with  double  spaces\n\tand tabs"]
)
def test_incremental_detokenizer_reproduces_text(llm, text):
    tok = llm.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode("prefix ", add_special_tokens=False))
    deltas = [detok.push(i) for i in ids]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_text_prompt_and_output_text(llm):
    out = llm.generate("The quick brown fox", GREEDY)[0]
    assert out.prompt_token_ids == llm.tokenizer.encode("The quick brown fox", add_special_tokens=False)
    assert out.text == llm.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    assert out.finish_reason == "length" and len(out.token_ids) == 24


def test_stop_string_spanning_two_tokens(llm):
    full = llm.generate("Once upon a time", GREEDY)[0]
    tok = llm.tokenizer
    pieces = [tok.decode(full.token_ids[: i + 1]) for i in range(len(full.token_ids))]
    # find a boundary where both neighbouring tokens contribute at least one character
    for i in range(4, len(pieces) - 1):
        a, b = pieces[i - 1], pieces[i]
        c = pieces[i + 1]
        if len(b) > len(a) and len(c) > len(b) and b[-1:].strip() and c[len(b) : len(b) + 1].strip():
            stop = b[-1] + c[len(b)]
            if stop not in b[:-1]:
                break
    else:
        pytest.skip("no suitable token boundary in this generation")
    out = llm.generate("Once upon a time", SamplingParams(max_tokens=24, temperature=0.0, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == b[:-1]
    assert stop not in out.text


def test_chat_uses_the_checkpoint_template(llm):
    messages = [{"role": "system", "content": "You are Ling."}, {"role": "user", "content": "Hi"}]
    out = llm.chat(messages, SamplingParams(max_tokens=4, temperature=0.0))[0]
    expected = (
        "<role>SYSTEM</role>You are Ling.\ndetailed thinking off<|role_end|>"
        "<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>"
    )
    assert out.prompt == expected
    assert out.prompt_token_ids == llm.tokenizer.encode(expected, add_special_tokens=False)
    batch = llm.chat([messages, [{"role": "user", "content": "Yo"}]], SamplingParams(max_tokens=2))
    assert len(batch) == 2 and batch[0].prompt == expected


def test_eos_ids_come_from_the_checkpoint(llm):
    tok = llm.tokenizer
    want = {tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|role_end|>")}
    assert want <= llm.eos_token_ids


def test_role_end_spelled_out_is_a_default_stop_string_unless_ignore_eos(llm):
    from engine.groups import stop_strings

    family = llm.model.default_stop_strings
    assert "<|role_end|>" in stop_strings(SamplingParams(), family)
    assert "<|role_end|>" not in stop_strings(SamplingParams(ignore_eos=True), family)
    assert stop_strings(SamplingParams(stop=["x"]), family) == ["x", "<|role_end|>"]


def test_streamed_deltas_add_up_to_the_final_text_with_stop_strings(demo_ling):
    """A tail that may still become a stop string is held back, so deltas never overshoot the cut."""
    from engine.engine import LLMEngine

    engine = LLMEngine(demo_ling)
    engine.start()
    try:
        prompt = "Once upon a time"
        full = "".join(o.new_text for o in engine.stream(prompt, GREEDY))
        assert len(full) > 12
        cases = [
            [full[len(full) // 2 : len(full) // 2 + 3]],  # completes mid-text: cut there
            [full[5] + "\u2603\u2603"],  # starts, never completes: released later
            [full[-2:] + "\u2603"],  # pending at the end: released on finish
        ]
        for stops in cases:
            params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=stops)
            outs = list(engine.stream(prompt, params))
            assert "".join(o.new_text for o in outs) == outs[-1].text, stops
            assert outs[-1].text == full[: full.find(stops[0])] if stops[0] in full else full
    finally:
        engine.shutdown()
