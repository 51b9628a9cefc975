"""The client's request building and response conversion, without a server."""

from __future__ import annotations

import grpc
import pytest

from bailing.client import (
    BailingClientError,
    BailingConnectionError,
    Choice,
    Chunk,
    Client,
    Completion,
    Usage,
    build_request,
    messages_to_pb,
)
from bailing.client_convert import (
    chunk_from_pb,
    completion_from_pb,
    error_from_rpc,
    health_status_name,
    models_from_pb,
)
from gateway.api import pb

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
WAV = b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 16


def _invalid(call, match: str) -> BailingClientError:
    with pytest.raises(BailingClientError, match=match) as info:
        call()
    assert info.value.code == "INVALID_ARGUMENT"
    return info.value


def test_string_content_becomes_one_text_part():
    (msg,) = messages_to_pb([{"role": "user", "content": "hello"}])
    assert msg.role == "user"
    assert [p.WhichOneof("part") for p in msg.content] == ["text"]
    assert msg.content[0].text == "hello"


def test_content_lists_keep_order_and_kinds(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0jpeg")
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "path": str(image)},
        {"type": "audio", "data": WAV},
        {"type": "video", "data": b"raw", "mime_type": "video/mp4"},
        "plain string part",
    ]
    (msg,) = messages_to_pb([{"role": "user", "content": content}])
    kinds = [p.WhichOneof("part") for p in msg.content]
    assert kinds == ["text", "image", "audio", "video", "text"]
    assert msg.content[1].image.data == image.read_bytes()
    assert msg.content[1].image.mime_type == "image/jpeg"  # from the file name
    assert msg.content[2].audio.mime_type == "audio/wav"  # sniffed from the bytes
    assert msg.content[3].video.mime_type == "video/mp4"  # as given
    assert msg.content[4].text == "plain string part"


@pytest.mark.parametrize(
    ("data", "mime"),
    [(PNG, "image/png"), (b"GIF89a..", "image/gif"), (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"), (b"??", "")],
)
def test_mime_type_is_sniffed_for_bytes(data, mime):
    (msg,) = messages_to_pb([{"role": "user", "content": [{"type": "image", "data": bytearray(data)}]}])
    assert msg.content[0].image.data == bytes(data)
    assert msg.content[0].image.mime_type == mime


def test_system_and_assistant_turns_are_kept():
    msgs = messages_to_pb(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ]
    )
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], r"messages: at least one"),
        (["hi"], r"messages\[0\]: a message is a dict"),
        ([{"content": "hi"}], r"messages\[0\]\.role"),
        ([{"role": "user"}], r"messages\[0\]\.content"),
        ([{"role": "user", "content": [{"type": "sound", "data": b""}]}], r"content\[0\]: unknown part type"),
        ([{"role": "user", "content": [{"type": "text"}]}], r"content\[0\]: a text part needs"),
        ([{"role": "user", "content": [{"type": "image"}]}], r"content\[0\]: an image part needs"),
        ([{"role": "user", "content": ["ok", {"type": "image", "data": "str"}]}], r"content\[1\]"),
        ([{"role": "user", "content": [7]}], r"content\[0\]: a content part is a dict"),
    ],
)
def test_bad_messages_name_the_field(messages, match):
    _invalid(lambda: messages_to_pb(messages), match)


def test_unreadable_media_path_is_an_invalid_argument(tmp_path):
    missing = tmp_path / "nope.png"
    err = _invalid(
        lambda: messages_to_pb([{"role": "user", "content": [{"type": "image", "path": missing}]}]),
        r"content\[0\]: cannot read",
    )
    assert str(missing) in err.details


def test_request_sets_only_the_options_given():
    req = build_request("ling", "The capital of France is", max_tokens=8, temperature=0.0, stop="\n")
    assert req.model == "ling" and req.prompt == "The capital of France is" and not req.messages
    assert req.sampling.HasField("max_tokens") and req.sampling.max_tokens == 8
    assert req.sampling.HasField("temperature") and req.sampling.temperature == 0.0  # 0 is not "unset"
    assert not req.sampling.HasField("top_p") and not req.sampling.HasField("seed")
    assert list(req.sampling.stop) == ["\n"]
    assert not req.reasoning.HasField("enable_thinking")
    assert req.request_id == ""


def test_request_with_every_option():
    req = build_request(
        "ring",
        messages=[{"role": "user", "content": "2+2?"}],
        max_tokens=64, temperature=0.7, top_p=0.9, top_k=50, min_p=0.05, seed=3, stop=["a", "b"],
        repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.25, min_tokens=2, ignore_eos=True,
        stop_token_ids=[7, 9], enable_thinking=False, thinking_budget=128, request_id="r-1", priority=2, n=3,
    )  # fmt: skip
    s = req.sampling
    assert (s.max_tokens, s.top_k, s.seed, s.min_tokens, s.ignore_eos, s.n) == (64, 50, 3, 2, True, 3)
    assert s.temperature == pytest.approx(0.7) and s.top_p == pytest.approx(0.9)
    assert s.min_p == pytest.approx(0.05) and s.repetition_penalty == pytest.approx(1.1)
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, 0.25)
    assert list(s.stop) == ["a", "b"] and list(s.stop_token_ids) == [7, 9]
    assert req.reasoning.HasField("enable_thinking") and req.reasoning.enable_thinking is False
    assert req.reasoning.thinking_budget == 128
    assert (req.request_id, req.priority, req.messages[0].content[0].text) == ("r-1", 2, "2+2?")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "ling"}, "exactly one of prompt and messages"),
        ({"model": "ling", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one"),
        ({"model": "", "prompt": "a"}, "model"),
        ({"model": "ling", "prompt": b"bytes"}, "prompt: a string"),
    ],
)
def test_bad_requests(kwargs, match):
    _invalid(lambda: build_request(**kwargs), match)


def test_responses_become_dataclasses():
    msg = pb.GenerateResponse(
        request_id="r", model="ling", text="hi", reasoning_text="hmm", finish_reason="stop",
        usage=pb.Usage(prompt_tokens=3, completion_tokens=2, reasoning_tokens=1, cached_prompt_tokens=0),
        timing=pb.Timing(queue_s=0.1, time_to_first_token_s=0.2, total_s=0.3),
    )  # fmt: skip
    out = completion_from_pb(msg)
    assert isinstance(out, Completion)
    assert (out.request_id, out.model, out.text, out.reasoning_text, out.finish_reason) == (
        "r", "ling", "hi", "hmm", "stop",
    )  # fmt: skip
    assert out.usage == Usage(3, 2, 1, 0)
    assert out.timing.time_to_first_token_s == pytest.approx(0.2)

    delta = chunk_from_pb(pb.GenerateChunk(request_id="r", text="h"))
    assert delta == Chunk("r", "h", "", "", None)  # usage only on the last chunk
    last = chunk_from_pb(
        pb.GenerateChunk(request_id="r", finish_reason="length", usage=pb.Usage(completion_tokens=4))
    )
    assert last.usage == Usage(0, 4, 0, 0) and last.finish_reason == "length"

    listing = pb.ListModelsResponse(
        models=[
            pb.ModelInfo(name="ling", family="ling", live_workers=2, max_model_len=4096, modalities=["text"])
        ]
    )
    (model,) = models_from_pb(listing)
    assert (model.name, model.live_workers, model.max_model_len, model.modalities) == (
        "ling",
        2,
        4096,
        ("text",),
    )


def test_n_is_a_sampling_option():
    assert build_request("ring", "hi", n=4).sampling.n == 4
    assert not build_request("ring", "hi").sampling.HasField("n")  # unset: one sample
    with pytest.raises(TypeError, match="best_of"):
        build_request("ring", "hi", best_of=2)


def test_choices_and_chunk_indices_become_dataclasses():
    msg = pb.GenerateResponse(
        request_id="r", model="ring", text="a", reasoning_text="ra", finish_reason="stop",
        usage=pb.Usage(prompt_tokens=3, completion_tokens=5),
        choices=[
            pb.Choice(index=0, text="a", reasoning_text="ra", finish_reason="stop", completion_tokens=2),
            pb.Choice(index=1, text="b", finish_reason="length", completion_tokens=3, reasoning_tokens=1),
        ],
    )  # fmt: skip
    out = completion_from_pb(msg)
    assert out.choices == (Choice(0, "a", "ra", "stop", 2, 0), Choice(1, "b", "", "length", 3, 1))
    assert (out.text, out.finish_reason, out.usage.completion_tokens) == ("a", "stop", 5)

    assert chunk_from_pb(pb.GenerateChunk(request_id="r", index=2, text="x")) == Chunk("r", "x", "", index=2)
    finish = chunk_from_pb(pb.GenerateChunk(request_id="r", index=1, finish_reason="length"))
    assert (finish.index, finish.finish_reason, finish.usage) == (1, "length", None)


def test_logprobs_are_asked_for_and_come_back_as_dataclasses():
    from bailing.client_batch import completion_to_pb
    from pipelines.protocol import TokenLogprob, TopLogprob

    assert build_request("ling", "hi", logprobs=3).sampling.logprobs == 3
    half = pb.TokenLogprob(token="\ufffd", bytes=b"\xe4", logprob=-2.0, token_id=9)
    half.top.add(token="a", bytes=b"a", logprob=-0.5, token_id=1)
    msg = pb.GenerateResponse(request_id="r", logprobs=[half], choices=[pb.Choice(logprobs=[half])])
    out = completion_from_pb(msg)
    want = (TokenLogprob(9, "\ufffd", -2.0, b"\xe4", (TopLogprob(1, "a", -0.5, b"a"),)),)
    assert out.logprobs == out.choices[0].logprobs == want
    assert chunk_from_pb(pb.GenerateChunk(request_id="r", text="x", logprobs=[half])).logprobs == want
    assert completion_to_pb(out).choices[0].logprobs == msg.choices[0].logprobs  # a batch result's way back


def test_health_status_names():
    from grpc_health.v1 import health_pb2

    serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    assert health_status_name(serving) == "SERVING"
    assert health_status_name(health_pb2.HealthCheckResponse(status=2)) == "NOT_SERVING"


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_rpc_errors_become_client_errors():
    err = error_from_rpc(_FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_p: must be in (0, 1]"))
    assert type(err) is BailingClientError
    assert (err.code, err.details) == ("INVALID_ARGUMENT", "sampling.top_p: must be in (0, 1]")
    served = error_from_rpc(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "no live worker serves 'ling'"))
    assert type(served) is BailingClientError  # the server said so: not a connection problem
    down = error_from_rpc(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"))
    assert isinstance(down, BailingConnectionError)


def test_dead_address_raises_connection_errors():
    with Client("127.0.0.1:1", timeout=5) as client:
        with pytest.raises(BailingConnectionError):
            client.wait_ready(5)
        with pytest.raises(BailingConnectionError):
            client.health()
        with pytest.raises(BailingConnectionError), client.stream("ling", "hi") as stream:
            list(stream)


def test_diffusion_options_go_into_the_request_and_unknown_ones_are_refused():
    req = build_request("llada2", "hi", diffusion={"block_length": 8, "decoder": "credit", "steps": None})
    assert req.HasField("diffusion") and req.diffusion.block_length == 8 and req.diffusion.decoder == "credit"
    assert not req.diffusion.HasField("steps")
    assert not build_request("llada2", "hi").HasField("diffusion")
    with pytest.raises(BailingClientError, match="diffusion"):
        build_request("llada2", "hi", diffusion={"blocks": 8})
