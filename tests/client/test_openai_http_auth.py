"""The official `openai` package against an auth-enabled `bailing up` stack (`--token`; one demo Ling
worker): the right key is served, a wrong or missing key gets 401 (`openai.AuthenticationError`) on
every kind of endpoint, and the stack keeps serving."""

from __future__ import annotations

import openai
import pytest

from bailing.stack import Stack

pytestmark = pytest.mark.slow

TOKEN = "demo-secret-token-1234"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """`BAILING_API_TOKEN=... bailing up --models ling`: the gateway child reads the token from its
    environment, as `bailing up` passes it on."""
    folder = tmp_path_factory.mktemp("auth-stack")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BAILING_API_TOKEN", TOKEN)
        stack = Stack(port=0, http_port=0, dir=folder, token=TOKEN, models=("ling",), ready_timeout_s=300)
        with stack as running:
            yield running


def client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{stack.http_address}/v1", api_key=key, timeout=120, max_retries=0)


def test_a_wrong_key_gets_401_and_the_right_one_is_served(guarded):
    hello = [{"role": "user", "content": "hello"}]
    with client(guarded, "wrong-key") as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.chat.completions.create(model="ling", messages=hello, max_tokens=4)
        assert refused.value.status_code == 401 and "invalid bearer token" in refused.value.message
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        with pytest.raises(openai.AuthenticationError):
            wrong.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            wrong.batches.list()
    with client(guarded, TOKEN) as right:
        assert [m.id for m in right.models.list().data] == ["ling"]
        out = right.chat.completions.create(model="ling", messages=hello, max_tokens=4)
        assert out.choices[0].message.content and out.usage.completion_tokens == 4
