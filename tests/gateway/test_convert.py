"""GenerateRequest -> GenerateJob validation, and Event -> chunk/response conversion (no server)."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest

from gateway.api import pb
from gateway.config import GatewayConfig
from gateway.convert import model_info, request_to_job
from gateway.errors import Rejection
from gateway.replies import ResponseBuilder, event_to_chunks
from gateway.state import ModelState, RequestTrace
from pipelines.protocol import (
    MAX_SAMPLES,
    ChoiceSummary,
    Event,
    EventType,
    GenerateJob,
    Usage,
    WorkerInfo,
    media_key,
)

CFG = GatewayConfig(redis_url="redis://unused", models=("ling", "ring"))
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 32
WAV = b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 32


def worker(model="ling", modalities=("text",), max_model_len=2048, wid="w1") -> WorkerInfo:
    return WorkerInfo(wid, model, "ling", "h", 1, "cpu", 4, max_model_len, tuple(modalities))


TEXT_ONLY = ModelState("ling", (worker(),))
OMNI = ModelState("ling", (worker(modalities=("text", "image", "audio", "video")),))


def request(**kw) -> pb.GenerateRequest:
    kw.setdefault("model", "ling")
    if "messages" not in kw:
        kw.setdefault("prompt", "hello")
    return pb.GenerateRequest(**kw)


def user(*parts: pb.ContentPart, role: str = "user") -> pb.Message:
    return pb.Message(role=role, content=list(parts))


def text(s: str) -> pb.ContentPart:
    return pb.ContentPart(text=s)


def image(data: bytes, mime: str = "") -> pb.ContentPart:
    return pb.ContentPart(image=pb.Media(data=data, mime_type=mime))


def convert(req: pb.GenerateRequest, state: ModelState | None = OMNI, cfg: GatewayConfig = CFG):
    return request_to_job(req, cfg, state, submitted_at=1000.0, deadline=1010.0)


S = pb.SamplingParams
BAD = [
    # (id, request kwargs, state, expected code, expected message fragment)
    ("temperature", {"sampling": S(temperature=-1)}, "sampling.temperature must be >= 0, got -1"),
    ("temperature-nan", {"sampling": S(temperature=float("nan"))}, "sampling.temperature must be >= 0"),
    ("top_p-zero", {"sampling": S(top_p=0)}, "sampling.top_p must be in (0, 1], got 0"),
    ("top_p-big", {"sampling": S(top_p=1.5)}, "sampling.top_p must be in (0, 1], got 1.5"),
    ("top_k", {"sampling": S(top_k=-2)}, "sampling.top_k must be >= -1"),
    ("min_p-neg", {"sampling": S(min_p=-0.1)}, "sampling.min_p must be in [0, 1]"),
    ("min_p-big", {"sampling": S(min_p=1.5)}, "sampling.min_p must be in [0, 1]"),
    ("repetition_penalty", {"sampling": S(repetition_penalty=0)}, "sampling.repetition_penalty must be > 0"),
    (
        "presence_penalty",
        {"sampling": S(presence_penalty=2.5)},
        "sampling.presence_penalty must be in [-2, 2]",
    ),
    (
        "frequency_penalty",
        {"sampling": S(frequency_penalty=-3)},
        "sampling.frequency_penalty must be in [-2, 2]",
    ),
    ("max_tokens-zero", {"sampling": S(max_tokens=0)}, "sampling.max_tokens must be in [1, 8192], got 0"),
    ("max_tokens-limit", {"sampling": S(max_tokens=9000)}, "sampling.max_tokens must be in [1, 8192]"),
    ("max_tokens-model", {"sampling": S(max_tokens=4096)}, "sampling.max_tokens must be <= 2048"),
    ("min_tokens-neg", {"sampling": S(min_tokens=-1)}, "sampling.min_tokens must be in [0, max_tokens="),
    (
        "min_tokens-big",
        {"sampling": S(max_tokens=4, min_tokens=5)},
        "sampling.min_tokens must be in [0, max_tokens=4]",
    ),
    ("n-zero", {"sampling": S(n=0)}, "sampling.n must be in [1, 16], got 0"),
    ("n-big", {"sampling": S(n=17)}, "sampling.n must be in [1, 16], got 17"),
    ("n-negative", {"sampling": S(n=-1)}, "sampling.n must be in [1, 16], got -1"),
    ("stop-empty", {"sampling": S(stop=["a", ""])}, "sampling.stop[1] is empty"),
    (
        "stop-many",
        {"sampling": S(stop=[str(i) for i in range(17)])},
        "sampling.stop has 17 strings, at most 16",
    ),
    (
        "stop_token_ids",
        {"sampling": S(stop_token_ids=[1, -5])},
        "sampling.stop_token_ids[1] must be >= 0, got -5",
    ),
    (
        "thinking_budget",
        {"reasoning": pb.ReasoningOptions(thinking_budget=-1)},
        "reasoning.thinking_budget must be >= 0",
    ),
    (
        "role",
        {"messages": [user(text("x"), role="bot")]},
        "messages[0].role must be one of system, user, assistant",
    ),
    ("content-empty", {"messages": [user(text("x")), user()]}, "messages[1].content is empty"),
    (
        "part-unset",
        {"messages": [user(text("x"), pb.ContentPart())]},
        "messages[0].content[1] has no part set",
    ),
    ("both-empty", {"messages": [], "prompt": ""}, "messages and prompt are both empty: send one"),
    ("both-set", {"messages": [user(text("x"))], "prompt": "y"}, "messages and prompt are both set"),
    ("request_id-space", {"request_id": "a b"}, "request_id must match [A-Za-z0-9._:-]{1,128}"),
    ("request_id-long", {"request_id": "a" * 129}, "request_id must match"),
    ("model-empty", {"model": ""}, "model is empty"),
    (
        "image-not-png",
        {"messages": [user(text("x"), image(b"GARBAGE" * 8, "image/png"))]},
        "messages[0].content[1].image: not a decodable image (mime image/png, "
        "bytes do not start with a PNG signature)",
    ),
    (
        "image-mime-mismatch",
        {"messages": [user(image(JPEG, "image/png"))]},
        "messages[0].content[0].image: mime_type image/png does not match the bytes (they are JPEG",
    ),
    (
        "image-no-bytes",
        {"messages": [user(image(b"", "image/png"))]},
        "messages[0].content[0].image: is empty",
    ),
    (
        "image-too-big",
        {"messages": [user(image(PNG + b"\0" * (2 * 1024 * 1024), "image/png"))]},
        "messages[0].content[0].image: is 2097192 bytes, more than the limit of 1048576 bytes",
    ),
    (
        "image-mime-unknown",
        {"messages": [user(image(PNG, "image/tiff"))]},
        "mime_type 'image/tiff' is not a supported",
    ),
    (
        "audio-is-png",
        {"messages": [user(pb.ContentPart(audio=pb.Media(data=PNG)))]},
        "messages[0].content[0].audio: not a decodable audio (bytes match none of WAV, FLAC, OGG, MP3; "
        "they look like PNG image)",
    ),
]


@pytest.mark.parametrize(("kwargs", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_field_is_invalid_argument_naming_it(kwargs, fragment):
    cfg = GatewayConfig(redis_url="redis://unused", models=("ling",), max_media_bytes=1024 * 1024)
    with pytest.raises(Rejection) as info:
        convert(request(**kwargs), cfg=cfg)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.message


def test_unknown_model_is_not_found():
    with pytest.raises(Rejection) as info:
        convert(request(model="gpt"))
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    assert info.value.message == "model 'gpt' is not served here (served: ling, ring)"


@pytest.mark.parametrize("kind", ["image", "audio", "video"])
def test_modality_the_live_workers_lack_is_rejected(kind):
    part = pb.ContentPart(**{kind: pb.Media(data=PNG)})
    with pytest.raises(Rejection) as info:
        convert(request(messages=[user(part)]), state=TEXT_ONLY)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert f"messages[0].content[0].{kind}: model 'ling' does not accept {kind} input" in info.value.message


def test_modalities_are_what_every_live_worker_accepts():
    mixed = ModelState("ling", (worker(modalities=("text", "image")), worker(modalities=("text", "audio"))))
    assert mixed.modalities == ("text",)
    assert ModelState("ling").modalities == ()


def test_live_limits_are_skipped_without_workers():
    job, _ = convert(request(sampling=S(max_tokens=4096)), state=None)
    assert job.sampling.max_tokens == 4096


def test_full_request_becomes_the_job():
    req = request(
        messages=[
            user(text("be brief"), role="system"),
            user(text("what is this?"), image(PNG)),
            user(pb.ContentPart(audio=pb.Media(data=WAV, mime_type="audio/x-wav"))),
        ],
        prompt="",
        sampling=S(
            max_tokens=64,
            temperature=0.5,
            top_p=0.9,
            top_k=-1,
            min_p=0.05,
            seed=7,
            stop=["\n\n"],
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            n=1,
            min_tokens=2,
            ignore_eos=True,
            stop_token_ids=[5, 6],
        ),
        reasoning=pb.ReasoningOptions(enable_thinking=True, thinking_budget=128),
        request_id="req-1.a:b",
        priority=3,
    )
    job, blobs = convert(req)
    assert job.request_id == "req-1.a:b" and job.model == "ling" and job.prompt is None
    assert job.priority == 3 and job.deadline == 1010.0 and job.submitted_at == 1000.0
    assert job.enable_thinking is True and job.thinking_budget == 128
    s = job.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.min_p, s.seed) == (64, 0.5, 0.9, -1, 0.05, 7)
    assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty) == (1.1, 0.5, -0.5)
    assert (s.n, s.min_tokens, s.ignore_eos, s.stop, s.stop_token_ids) == (1, 2, True, ("\n\n",), (5, 6))
    roles = [m.role for m in job.messages]
    assert roles == ["system", "user", "user"]
    img = job.messages[1].parts[1]
    assert img.type == "image" and img.media.mime_type == "image/png" and img.media.size == len(PNG)
    assert img.media.key == media_key(hashlib.sha256(PNG).hexdigest())
    assert job.messages[2].parts[0].media.mime_type == "audio/wav"
    assert [b.key for b in blobs] == [img.media.key, job.messages[2].parts[0].media.key]
    assert blobs[0].data == PNG
    assert GenerateJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_unset_fields_stay_unset_and_an_id_is_assigned():
    job, blobs = convert(request())
    assert job.prompt == "hello" and job.messages is None and blobs == []
    assert len(job.request_id) == 32 and int(job.request_id, 16) >= 0
    s = job.sampling
    assert s.max_tokens is None and s.temperature is None and s.top_k is None and s.ignore_eos is None
    assert s.n == 1 and job.enable_thinking is None and job.thinking_budget is None


@pytest.mark.parametrize("n", [1, 2, 3, MAX_SAMPLES])
def test_n_samples_up_to_the_limit_are_accepted(n):
    job, _ = convert(request(sampling=S(n=n)))
    assert job.sampling.n == n
    assert GenerateJob.from_dict(json.loads(json.dumps(job.to_dict()))).sampling.n == n


# ---- events -> chunks / responses --------------------------------------------------------------
def test_delta_with_both_texts_sends_reasoning_first():
    chunks = event_to_chunks("r", Event(seq=1, type=EventType.DELTA, text="A", reasoning_text="think"))
    assert [(c.reasoning_text, c.text) for c in chunks] == [("think", ""), ("", "A")]
    assert all(c.request_id == "r" and not c.finish_reason for c in chunks)


def test_started_event_sends_nothing():
    assert event_to_chunks("r", Event(seq=0, type=EventType.STARTED, worker_id="w")) == []


def test_done_is_the_last_chunk_with_usage():
    usage = Usage(prompt_tokens=3, completion_tokens=5, reasoning_tokens=2, cached_prompt_tokens=1)
    (last,) = event_to_chunks("r", Event(seq=3, type=EventType.DONE, finish_reason="length", usage=usage))
    assert last.finish_reason == "length"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 5)
    assert (last.usage.reasoning_tokens, last.usage.cached_prompt_tokens) == (2, 1)


@pytest.mark.parametrize("error_code", ["", "CANCELLED"])
def test_cancelled_event_finishes_with_cancelled(error_code):
    (last,) = event_to_chunks("r", Event(seq=2, type=EventType.CANCELLED, error_code=error_code))
    assert last.finish_reason == "cancelled"


@pytest.mark.parametrize(
    ("error_code", "status"),
    [
        ("INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT),
        ("RESOURCE_EXHAUSTED", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("UNAVAILABLE", grpc.StatusCode.UNAVAILABLE),
        ("INTERNAL", grpc.StatusCode.INTERNAL),
        ("NO_SUCH_CODE", grpc.StatusCode.INTERNAL),
        ("OK", grpc.StatusCode.INTERNAL),
    ],
)
def test_error_event_maps_its_code(error_code, status):
    event = Event(seq=1, type=EventType.ERROR, error_code=error_code, message="prompt too long\n  at line 3")
    with pytest.raises(Rejection) as info:
        event_to_chunks("r", event)
    assert info.value.code is status
    assert info.value.message == "prompt too long"  # the first line only: no traceback reaches the client


def test_deadline_cancel_is_deadline_exceeded():
    event = Event(seq=1, type=EventType.CANCELLED, error_code="DEADLINE_EXCEEDED", message="past deadline")
    with pytest.raises(Rejection) as info:
        event_to_chunks("r", event)
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_response_collects_text_and_timing():
    trace = RequestTrace("r", "ling", "Generate", submitted_at=100.0)
    builder = ResponseBuilder("r", "ling")
    events = [
        Event(seq=0, type=EventType.STARTED, worker_id="w", time=100.5),
        Event(seq=1, type=EventType.DELTA, reasoning_text="hmm", time=101.0),
        Event(seq=2, type=EventType.DELTA, text="Hi", time=101.25),
        Event(seq=3, type=EventType.DELTA, text=" there", time=101.5),
        Event(seq=4, type=EventType.DONE, finish_reason="stop", usage=Usage(4, 3, 1), time=101.75),
    ]
    gaps = [trace.observe(e) for e in events]
    for e in events:
        builder.add(e)
    assert gaps == [None, None, 0.25, 0.25, None]
    resp = builder.build(trace)
    assert (resp.request_id, resp.model, resp.text, resp.reasoning_text) == ("r", "ling", "Hi there", "hmm")
    assert (
        resp.finish_reason == "stop"
        and resp.usage.completion_tokens == 3
        and resp.usage.reasoning_tokens == 1
    )
    assert resp.timing.queue_s == pytest.approx(0.5)
    assert resp.timing.time_to_first_token_s == pytest.approx(1.0)
    assert resp.timing.total_s == pytest.approx(1.75)
    assert trace.worker_id == "w"


def test_deltas_carry_their_choice_index():
    chunks = event_to_chunks("r", Event(seq=1, type=EventType.DELTA, index=2, text="A", reasoning_text="t"))
    assert [(c.index, c.reasoning_text, c.text) for c in chunks] == [(2, "t", ""), (2, "", "A")]
    (plain,) = event_to_chunks("r", Event(seq=1, type=EventType.DELTA, text="B"))
    assert plain.index == 0


def _summaries(*finish: str) -> tuple[ChoiceSummary, ...]:
    return tuple(
        ChoiceSummary(i, f, completion_tokens=i + 1, reasoning_tokens=i) for i, f in enumerate(finish)
    )


def test_done_of_n_samples_finishes_every_choice_then_usage():
    usage = Usage(prompt_tokens=3, completion_tokens=6, reasoning_tokens=3)
    done = Event(
        seq=9,
        type=EventType.DONE,
        finish_reason="stop",
        usage=usage,
        choices=_summaries("stop", "length", "stop"),
    )
    chunks = event_to_chunks("r", done)
    assert [(c.index, c.finish_reason) for c in chunks] == [(0, "stop"), (1, "length"), (2, "stop")]
    assert [c.HasField("usage") for c in chunks] == [False, False, True]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 6)
    assert all(c.request_id == "r" and not c.text and not c.reasoning_text for c in chunks)


def test_done_with_a_last_delta_sends_the_delta_first():
    done = Event(
        seq=9, type=EventType.DONE, index=1, text="z", usage=Usage(1, 2), choices=_summaries("stop", "stop")
    )
    chunks = event_to_chunks("r", done)
    assert [(c.index, c.text, c.finish_reason) for c in chunks] == [
        (1, "z", ""),
        (0, "", "stop"),
        (1, "", "stop"),
    ]


def test_cancelled_n_samples_still_ends_with_one_chunk():
    (last,) = event_to_chunks("r", Event(seq=4, type=EventType.CANCELLED, usage=Usage(3, 2)))
    assert (last.index, last.finish_reason, last.usage.completion_tokens) == (0, "cancelled", 2)


def _build(events: list[Event]) -> pb.GenerateResponse:
    builder = ResponseBuilder("r", "ring")
    for e in events:
        builder.add(e)
    return builder.build(RequestTrace("r", "ring", "Generate", submitted_at=100.0))


def test_response_of_n_samples_collects_interleaved_deltas_per_choice():
    d = EventType.DELTA
    events = [
        Event(seq=0, type=EventType.STARTED, worker_id="w"),
        Event(seq=1, type=d, index=0, reasoning_text="r0"),
        Event(seq=2, type=d, index=2, reasoning_text="r2"),
        Event(seq=3, type=d, index=1, text="b"),
        Event(seq=4, type=d, index=0, text="a"),
        Event(seq=5, type=d, index=2, text="c"),
        Event(seq=6, type=d, index=1, text="B"),
        Event(seq=7, type=d, index=0, text="A"),
        Event(seq=8, type=d, index=2, text="C"),
        Event(
            seq=9, type=EventType.DONE, finish_reason="stop", usage=Usage(5, 6, 3),
            choices=_summaries("stop", "length", "stop"),
        ),
    ]  # fmt: skip
    resp = _build(events)
    got = [(c.index, c.text, c.reasoning_text, c.finish_reason) for c in resp.choices]
    assert got == [(0, "aA", "r0", "stop"), (1, "bB", "", "length"), (2, "cC", "r2", "stop")]
    assert [(c.completion_tokens, c.reasoning_tokens) for c in resp.choices] == [(1, 0), (2, 1), (3, 2)]
    assert (resp.text, resp.reasoning_text, resp.finish_reason) == ("aA", "r0", "stop")  # choice 0
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (5, 6)  # the totals


def test_response_lists_a_choice_that_produced_no_delta():
    events = [
        Event(seq=0, type=EventType.DELTA, index=2, text="only two"),
        Event(seq=1, type=EventType.DONE, usage=Usage(5, 1), choices=_summaries("length", "length", "stop")),
    ]
    resp = _build(events)
    assert [(c.index, c.text, c.finish_reason) for c in resp.choices] == [
        (0, "", "length"), (1, "", "length"), (2, "only two", "stop"),
    ]  # fmt: skip
    assert (resp.text, resp.finish_reason) == ("", "length")


def test_response_of_one_sample_has_one_choice():
    events = [
        Event(seq=0, type=EventType.DELTA, reasoning_text="hmm"),
        Event(seq=1, type=EventType.DELTA, text="Hi"),
        Event(seq=2, type=EventType.DONE, finish_reason="length", usage=Usage(4, 3, 1)),
    ]
    (choice,) = _build(events).choices
    assert (choice.index, choice.text, choice.reasoning_text, choice.finish_reason) == (
        0,
        "Hi",
        "hmm",
        "length",
    )
    assert (choice.completion_tokens, choice.reasoning_tokens) == (3, 1)


def test_cancelled_response_of_n_samples_keeps_what_arrived():
    events = [
        Event(seq=0, type=EventType.DELTA, index=0, text="a"),
        Event(seq=1, type=EventType.DELTA, index=1, text="b"),
        Event(seq=2, type=EventType.CANCELLED),
    ]
    resp = _build(events)
    assert [(c.index, c.text, c.finish_reason) for c in resp.choices] == [
        (0, "a", "cancelled"),
        (1, "b", "cancelled"),
    ]
    assert (resp.text, resp.finish_reason) == ("a", "cancelled")


def test_model_info_reports_the_live_workers():
    state = ModelState("ling", (worker(max_model_len=4096), worker(max_model_len=2048, wid="w2")))
    info = model_info(state)
    assert (info.name, info.family, info.live_workers, info.max_model_len) == ("ling", "ling", 2, 2048)
    assert list(info.modalities) == ["text"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"models": ()}, "models"),
        ({"models": ("a", "a")}, "models"),
        ({"port": 70000}, "port"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"worker_dead_after_s": 0}, "worker_dead_after_s"),
        ({"redis_url": ""}, "redis_url"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    base = {"redis_url": "redis://x", "models": ("ling",)}
    with pytest.raises(ValueError, match=field):
        GatewayConfig(**{**base, **kwargs})


def test_diffusion_options_become_the_jobs_engine_field_names():
    req = request(diffusion=pb.DiffusionOptions(block_length=8, threshold=0.9, decoder="hierarchy",
                                                low_threshold=0.5, prefix_cache=False))  # fmt: skip
    job, _ = request_to_job(req, CFG, None, submitted_at=0.0)
    assert job.diffusion == {
        "block_length": 8, "threshold": 0.9, "decoder": "hierarchy", "low_threshold": 0.5,
        "prefix_cache": False,
    }  # fmt: skip
    assert request_to_job(request(), CFG, None, submitted_at=0.0)[0].diffusion is None
    empty = request(diffusion=pb.DiffusionOptions())  # sent but all unset: the model's defaults
    assert request_to_job(empty, CFG, None, submitted_at=0.0)[0].diffusion == {}
    job_json = type(job).from_dict(json.loads(json.dumps(job.to_dict())))  # survives Celery's JSON
    assert job_json.diffusion == job.diffusion


D = pb.DiffusionOptions


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (D(block_length=1), {"block_length": 1}),
        (D(block_length=1024), {"block_length": 1024}),
        (D(steps=1), {"steps": 1}),
        (D(threshold=0.0), {"threshold": 0.0}),
        (D(threshold=1.0), {"threshold": 1.0}),
        (D(decoder="llada2"), {"decoder": "llada2"}),
        (D(decoder="threshold"), {"decoder": "threshold"}),
        (D(decoder="credit"), {"decoder": "credit"}),
        (D(decoder="hierarchy"), {"decoder": "hierarchy"}),  # low_threshold: the engine's default
        (D(decoder="hierarchy", low_threshold=0.0), {"decoder": "hierarchy", "low_threshold": 0.0}),
        (D(eos_early_stop=True), {"eos_early_stop": True}),
        (D(eos_early_stop=False), {"eos_early_stop": False}),  # set to false is still sent
        (D(prefix_cache=True), {"prefix_cache": True}),
        (D(decoder=""), {}),  # empty decoder = unset
    ],
)
def test_each_diffusion_option_alone_reaches_the_job(options, expected):
    job, _ = convert(request(diffusion=options))
    assert job.diffusion == expected


DIFFUSION_BAD = [
    ("block_length-zero", D(block_length=0), "diffusion.block_length must be in [1, 1024], got 0"),
    ("block_length-negative", D(block_length=-8), "diffusion.block_length must be in [1, 1024], got -8"),
    ("block_length-big", D(block_length=1025), "diffusion.block_length must be in [1, 1024], got 1025"),
    ("steps-zero", D(steps=0), "diffusion.steps must be >= 1, got 0"),
    ("steps-negative", D(steps=-3), "diffusion.steps must be >= 1, got -3"),
    ("threshold-negative", D(threshold=-0.1), "diffusion.threshold must be in [0, 1], got -0.1"),
    ("threshold-big", D(threshold=1.5), "diffusion.threshold must be in [0, 1], got 1.5"),
    ("threshold-nan", D(threshold=float("nan")), "diffusion.threshold must be in [0, 1]"),
    ("threshold-inf", D(threshold=float("inf")), "diffusion.threshold must be in [0, 1]"),
    (
        "low_threshold-big",
        D(decoder="hierarchy", low_threshold=2.0),
        "diffusion.low_threshold must be in [0, 1], got 2.0",
    ),
    ("decoder-unknown", D(decoder="magic"), "diffusion.decoder must be one of llada2, threshold, hierarchy"),
    ("decoder-case", D(decoder="LLaDA2"), "diffusion.decoder must be one of"),
    (
        "low_threshold-no-decoder",
        D(low_threshold=0.3),
        "diffusion.low_threshold applies to decoder 'hierarchy'",
    ),
    (
        "low_threshold-threshold-decoder",
        D(decoder="threshold", low_threshold=0.3),
        "diffusion.low_threshold applies to decoder 'hierarchy' only",
    ),
]


@pytest.mark.parametrize(
    ("options", "fragment"), [c[1:] for c in DIFFUSION_BAD], ids=[c[0] for c in DIFFUSION_BAD]
)
def test_bad_diffusion_option_is_invalid_argument_naming_it(options, fragment):
    with pytest.raises(Rejection) as info:
        convert(request(diffusion=options))
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.message


def test_diffusion_options_reach_the_job_in_batch_jsonl_bodies():
    from google.protobuf import json_format

    body = {"prompt": "hi", "diffusion": {"blockLength": 8, "decoder": "credit", "eosEarlyStop": True}}
    req = json_format.ParseDict({**body, "model": "ling"}, pb.GenerateRequest())
    assert convert(req)[0].diffusion == {"block_length": 8, "decoder": "credit", "eos_early_stop": True}


@pytest.mark.parametrize(("completion", "forwards", "per_forward"), [(8, 2, 4.0), (5, 5, 1.0), (0, 0, 0.0)])
def test_usage_carries_forwards_and_tokens_per_forward(completion, forwards, per_forward):
    usage = Usage(prompt_tokens=3, completion_tokens=completion, forwards=forwards)
    (last,) = event_to_chunks("r", Event(seq=3, type=EventType.DONE, finish_reason="length", usage=usage))
    assert (last.usage.forwards, last.usage.tokens_per_forward) == (forwards, per_forward)
    builder = ResponseBuilder("r", "llada2")
    builder.add(Event(seq=3, type=EventType.DONE, finish_reason="length", usage=usage))
    resp = builder.build(RequestTrace("r", "llada2", "Generate", submitted_at=0.0))
    assert (resp.usage.forwards, resp.usage.tokens_per_forward) == (forwards, per_forward)
