"""Fuzz cases: what one call sends (`Case`: the method, the request - a protobuf message, raw bytes or a
raw HTTP/2 exchange - and the table row it counts in), the two mixes a run draws them from
(`request_mix`: every request message of proto/ and the wire-level ones; `media_mix`: one generated
media file per request), and `draw_mix`, which draws a run of them with hypothesis, each kind its share.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from gateway.api import pb
from tests.fuzz.batches import batch_ids, create_batch_requests, list_batches_requests
from tests.fuzz.fields import Target
from tests.fuzz.media import DAMAGES, MediaFile, media_files
from tests.fuzz.requests import (
    generate_requests,
    image_requests,
    speech_requests,
    transcribe_requests,
)
from tests.fuzz.wire import H2Case, RawBytes, h2_cases, oversize_messages, raw_messages

INFERENCE, JOBS = "/bailing.v1.Inference/", "/bailing.v1.Jobs/"
# request message -> the RPCs that take it (a case picks one)
RPCS = {
    "GenerateRequest": ("Generate", "GenerateStream"),
    "TranscribeRequest": ("Transcribe", "TranscribeStream"),
    "GenerateImageRequest": ("GenerateImage", "GenerateImageStream"),
    "SynthesizeSpeechRequest": ("SynthesizeSpeech", "SynthesizeSpeechStream"),
    "ListModelsRequest": ("ListModels",),
    "CreateBatchRequest": ("CreateBatch",),
    "GetBatchRequest": ("GetBatch",),
    "CancelBatchRequest": ("CancelBatch",),
    "GetBatchResultsRequest": ("GetBatchResults",),
    "ListBatchesRequest": ("ListBatches",),
}
STREAMING = {
    "GenerateStream",
    "TranscribeStream",
    "GenerateImageStream",
    "SynthesizeSpeechStream",
    "GetBatchResults",
}
RAW_ROW, H2_ROW, OVERSIZE_ROW = "raw bytes", "HTTP/2 frames", "over max_message_bytes"


@dataclass(frozen=True)
class Case:
    method: str  # the full method path, e.g. /bailing.v1.Inference/Generate
    request: Any  # a protobuf request message, RawBytes, or an H2Case
    row: str  # the table row it counts in: the message type, a wire-level kind, or a media label

    @property
    def rpc(self) -> str:
        return self.method.rsplit("/", 1)[-1]

    def __repr__(self) -> str:
        if isinstance(self.request, RawBytes | H2Case):
            return f"Case({self.method}, {self.request!r})"
        text = repr(str(self.request))
        return f"Case({self.method}, {text[:300]}{'...' if len(text) > 300 else ''})"


def _service(rpc: str) -> str:
    jobs = ("CreateBatch", "GetBatch", "CancelBatch", "GetBatchResults", "ListBatches")
    return JOBS if rpc in jobs else INFERENCE


@st.composite
def message_case(draw, messages: st.SearchStrategy) -> Case:
    """A Case for a protobuf request drawn from `messages`, on one of the RPCs that take its type."""
    request = draw(messages)
    name = type(request).DESCRIPTOR.name
    rpc = draw(st.sampled_from(RPCS[name]))
    return Case(_service(rpc) + rpc, request, name)


def _raw_case(drawn: tuple[str, RawBytes]) -> Case:
    return Case(drawn[0], drawn[1], RAW_ROW)


def _oversize_case(request: pb.GenerateRequest) -> Case:
    return Case(INFERENCE + "Generate", request, OVERSIZE_ROW)


def _id_request(cls) -> st.SearchStrategy:
    return st.builds(lambda i: cls(id=i), batch_ids())


Mix = dict[str, tuple[int, st.SearchStrategy[Case]]]  # kind: (weight, its cases)


def request_mix(target: Target, max_message_bytes: int) -> Mix:
    """Every request message of proto/, raw bytes, raw HTTP/2, now and then one over the size limit."""
    return {  # weights in 1000
        "generate": (330, message_case(generate_requests(target))),
        "transcribe": (70, message_case(transcribe_requests(target))),
        "image": (90, message_case(image_requests(target))),
        "speech": (90, message_case(speech_requests(target))),
        "create batch": (60, message_case(create_batch_requests(target))),
        "get batch": (20, message_case(_id_request(pb.GetBatchRequest))),
        "cancel batch": (15, message_case(_id_request(pb.CancelBatchRequest))),
        "batch results": (15, message_case(_id_request(pb.GetBatchResultsRequest))),
        "list batches": (15, message_case(list_batches_requests())),
        "list models": (10, message_case(st.just(pb.ListModelsRequest()))),
        "raw": (180, raw_messages(target.served[0]).map(_raw_case)),
        "h2": (103, h2_cases(target.served[0]).map(lambda c: Case(c.path, c, H2_ROW))),
        "oversize": (2, oversize_messages(max_message_bytes, target.served[0]).map(_oversize_case)),
    }


# ---- media: one generated file per request ---------------------------------------------------------
def _media(file: MediaFile) -> pb.Media:
    return pb.Media(data=file.data, mime_type=file.mime)


CHEAP = pb.SamplingParams(max_tokens=1, temperature=0.0)


def _carried(file: MediaFile, carrier: str, target: Target, model: str) -> Case:
    if carrier == "transcribe":
        request = pb.TranscribeRequest(model=model, audio=_media(file), sampling=CHEAP)
        return Case(INFERENCE + "Transcribe", request, file.label)
    if carrier == "edit":
        request = pb.GenerateImageRequest(
            model=model, prompt="make it blue", width=64, height=64, steps=1, reference_image=_media(file)
        )
        return Case(INFERENCE + "GenerateImage", request, file.label)
    if carrier == "clone":
        request = pb.SynthesizeSpeechRequest(model=model, text="Hi.", speaker_audio=_media(file))
        return Case(INFERENCE + "SynthesizeSpeech", request, file.label)
    part = pb.ContentPart(**{file.kind: _media(file)})
    content = [pb.ContentPart(text="What is this?"), part]
    request = pb.GenerateRequest(
        model=model, messages=[pb.Message(role="user", content=content)], sampling=CHEAP
    )
    return Case(INFERENCE + "Generate", request, file.label)


@st.composite
def media_cases(draw, target: Target, damage: str) -> Case:
    """A generated media file with `damage`, sent to a model that takes it: a chat part mostly; an
    audio file also to Transcribe or as a speaker clip to clone, an image also as an edit's reference."""
    file = draw(media_files((damage,)))
    carriers = ["chat", "chat"]
    if file.kind == "audio":
        carriers += ["transcribe"] + ["clone"] * bool(target.speech)
    if file.kind == "image" and target.image:
        carriers.append("edit")
    carrier = draw(st.sampled_from(carriers))
    models = {"edit": target.image, "clone": target.speech}.get(carrier, target.media)
    return _carried(file, carrier, target, draw(st.sampled_from(models)))


def media_mix(target: Target) -> Mix:
    """Each kind of damage (tests/fuzz/media.py) in equal parts."""
    return {damage: (1, media_cases(target, damage)) for damage in DAMAGES}


# ---- drawing a run ---------------------------------------------------------------------------------
def draw_cases(strategy: st.SearchStrategy[Case], n: int, seed: int | None = None) -> list[Case]:
    """`n` cases from `strategy` (fewer if it has fewer); `seed` None: the same every time."""
    cases: list[Case] = []

    @settings(
        max_examples=n,
        database=None,
        derandomize=seed is None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def collect(case: Case) -> None:
        cases.append(case)

    run = collect if seed is None else hypothesis_seed(seed)(collect)
    run()
    return cases[:n]


def quotas(mix: Mix, n: int) -> dict[str, int]:
    """How many of `n` cases each kind gets: its weight's share, rounded by largest remainders."""
    total = sum(weight for weight, _ in mix.values())
    exact = {kind: n * weight / total for kind, (weight, _) in mix.items()}
    counts = {kind: int(share) for kind, share in exact.items()}
    for kind in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[kind] += 1
    return counts


def draw_mix(mix: Mix, n: int, seed: int | None = None, part: tuple[int, int] = (0, 1)) -> list[Case]:
    """The cases of part j of `parts` (`part` = (j, parts)) of an `n`-case run in which each kind
    has its `quotas` share, spread evenly over the parts; shuffled together.

    Each kind is drawn on its own: hypothesis leans towards the first of the alternatives it picks
    between, so a mix drawn as one strategy would not keep the weights."""
    j, parts = part
    cases = []
    for i, (kind, count) in enumerate(quotas(mix, n).items()):
        here = count * (j + 1) // parts - count * j // parts
        if here:
            drawn = draw_cases(mix[kind][1], here, None if seed is None else seed + 1000 * j + i)
            cases += (drawn * here)[:here]  # a kind with fewer distinct cases (ListModels) repeats
    random.Random(None if seed is None else seed + j).shuffle(cases)
    return cases
