"""pipelines.text on the demo Ling checkpoint: prompt encoding, chat rendering, sampling defaults, limits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.engine import EngineConfig, LLMEngine
from engine.errors import RequestError
from pipelines import text
from pipelines.protocol import ChatMessage, GenerateJob, MediaRef, Part, Sampling


@pytest.fixture(scope="module")
def engine(demo_ling):
    return LLMEngine(demo_ling, config=EngineConfig(kv_cache_bytes=8 << 20))


def chat(*turns: tuple[str, str], **kw) -> GenerateJob:
    msgs = tuple(ChatMessage(role, (Part("text", text=t),)) for role, t in turns)
    return GenerateJob(request_id="r", model="ling", messages=msgs, **kw)


def test_prompt_is_encoded_without_special_tokens(engine):
    job = GenerateJob(request_id="r", model="ling", prompt="The quick brown fox")
    assert text.prompt_ids(job, engine) == engine.tokenizer.encode(
        "The quick brown fox", add_special_tokens=False
    )


def test_messages_render_with_the_checkpoint_template(engine):
    job = chat(("system", "Be brief."), ("user", "Hi there"))
    expected = engine.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text.render_chat(job, engine) == expected
    assert expected.endswith("<role>ASSISTANT</role>")
    assert text.prompt_ids(job, engine) == engine.encode(expected)


def test_text_parts_are_joined_with_newlines(engine):
    msgs = (ChatMessage("user", (Part("text", text="a"), Part("text", text="b"))),)
    job = GenerateJob(request_id="r", model="ling", messages=msgs)
    assert "<role>HUMAN</role>a\nb<|role_end|>" in text.render_chat(job, engine)


def test_enable_thinking_reaches_the_template(engine):
    seen = {}

    class Tok:
        chat_template = "x"

        def apply_chat_template(self, conv, **kw):
            seen.update(kw)
            return "rendered"

    fake = SimpleNamespace(tokenizer=Tok(), encode=engine.encode)
    text.render_chat(chat(("user", "hi"), enable_thinking=True), fake)
    assert seen == {"tokenize": False, "add_generation_prompt": True, "enable_thinking": True}
    seen.clear()
    text.render_chat(chat(("user", "hi")), fake)
    assert "enable_thinking" not in seen


def test_media_parts_are_rejected_naming_the_part(engine):
    media = MediaRef(kind="image", key="bailing:media:00", mime_type="image/png", size=3)
    msgs = (
        ChatMessage("system", (Part("text", text="s"),)),
        ChatMessage("user", (Part("text", text="look"), Part("image", media=media))),
    )
    job = GenerateJob(request_id="r", model="ling", messages=msgs)
    with pytest.raises(
        RequestError, match=r"^model 'ling' accepts only text; messages\[1\]\.content\[1\] is an image$"
    ):
        text.prompt_ids(job, engine)


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (GenerateJob(request_id="r", model="ling"), "exactly one of prompt and messages"),
        (
            GenerateJob(request_id="r", model="ling", prompt="x", messages=()),
            "exactly one of prompt and messages",
        ),
        (GenerateJob(request_id="r", model="ling", messages=()), "at least one message"),
        (GenerateJob(request_id="r", model="ling", prompt=5), "prompt must be a string"),
        (chat(("wizard", "hi")), r"messages\[0\]\.role must be one of"),
    ],
)
def test_bad_jobs_raise_request_errors(engine, job, message):
    with pytest.raises(RequestError, match=message):
        text.prompt_ids(job, engine)


# ---- sampling --------------------------------------------------------------------------------------
def test_unset_fields_come_from_the_checkpoint_then_the_engine():
    defaults = {"temperature": 0.6, "top_p": 0.9, "eos_token_id": [1, 2]}
    p = text.sampling_params(Sampling(top_k=5), defaults, max_model_len=4096, prompt_len=10)
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (0.6, 0.9, 5, 0.0, 1.0)
    p = text.sampling_params(Sampling(temperature=0.0, top_p=1.0), defaults, 4096, 10)
    assert (p.temperature, p.top_p) == (0.0, 1.0)


def test_client_values_pass_through():
    s = Sampling(max_tokens=7, seed=3, stop=("x", "y"), stop_token_ids=(9,), min_tokens=2, ignore_eos=True)
    p = text.sampling_params(s, {}, 4096, 10)
    assert (p.max_tokens, p.seed, p.stop, p.stop_token_ids, p.min_tokens, p.ignore_eos) == (
        7,
        3,
        ["x", "y"],
        [9],
        2,
        True,
    )


def test_default_max_tokens_is_capped_at_the_context():
    assert text.sampling_params(Sampling(), {}, 4096, 10).max_tokens == 256
    assert text.sampling_params(Sampling(), {}, 4096, 10, default_max_tokens=32).max_tokens == 32
    assert text.sampling_params(Sampling(), {}, 100, 90).max_tokens == 10
    assert text.sampling_params(Sampling(), {"max_new_tokens": 40}, 4096, 10).max_tokens == 40
    assert text.sampling_params(Sampling(max_tokens=10), {}, 100, 90).max_tokens == 10  # exactly fits


@pytest.mark.parametrize(
    ("sampling", "prompt_len", "message"),
    [
        (
            Sampling(max_tokens=11),
            90,
            r"max_tokens is 11, but the prompt \(90 tokens\) leaves room for only 10",
        ),
        (Sampling(), 100, "prompt has 100 tokens; the model's context is 100"),
        (Sampling(n=17), 10, r"sampling\.n must be an integer in \[1, 16\], got 17"),
        (Sampling(n=0), 10, r"sampling\.n must be an integer in \[1, 16\], got 0"),
        (Sampling(temperature=-1.0), 10, "temperature must be"),
        (Sampling(top_p="high"), 10, "top_p must be a number"),
        (Sampling(max_tokens=0), 10, "max_tokens must be"),
    ],
)
def test_sampling_errors_name_the_field(sampling, prompt_len, message):
    with pytest.raises(RequestError, match=message):
        text.sampling_params(sampling, {}, 100, prompt_len)


def test_the_checkpoint_s_min_new_tokens_is_the_default_floor():
    defaults = {"min_new_tokens": 8}
    assert text.sampling_params(Sampling(), defaults, 4096, 10).min_tokens == 8
    assert text.sampling_params(Sampling(min_tokens=2), defaults, 4096, 10).min_tokens == 2
    assert text.sampling_params(Sampling(max_tokens=4), defaults, 4096, 10).min_tokens == 4
    assert text.sampling_params(Sampling(), {}, 4096, 10).min_tokens == 0


def test_a_grammar_sets_the_checkpoint_s_floor_aside(demo_ling):
    from engine import LLM
    from models.family import get_family
    from pipelines.protocol import ChatMessage, GenerateJob, Part, ResponseFormat

    llm = LLM(demo_ling, max_num_seqs=2)
    ask = (ChatMessage("user", (Part("text", "yes?"),)),)
    fmt = ResponseFormat("regex", pattern="(yes|no)")
    job = GenerateJob(request_id="g", model="ling", messages=ask, response_format=fmt)
    p = text.prepare(job, llm.engine, get_family("ling"), {"min_new_tokens": 8})
    assert p.params.min_tokens == 0  # "yes" is one or two tokens: a floor of 8 would forbid its end
    out = llm.generate([p.prompt_ids], [p.params])[0]
    assert out.text in ("yes", "no") and out.finish_reason == "stop"
