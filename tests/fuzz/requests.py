"""Hypothesis strategies of the Inference service's request messages, each field drawn from
tests/fuzz/fields.py: GenerateRequest (messages and their content parts with media, prompt, sampling,
reasoning, diffusion and speech options, and the structured-output fields of
tests/fuzz/structured.py), TranscribeRequest, GenerateImageRequest, SynthesizeSpeechRequest and
ListModelsRequest.

Media parts are small valid files mostly (tests/fuzz/media.py `valid_media`), sometimes any damaged
file: the media fuzz proper sends them one per request (see tests/fuzz/cases.py).
"""

from __future__ import annotations

from hypothesis import strategies as st

from gateway.api import pb
from gateway.config import GatewayConfig
from tests.fuzz.fields import (
    Target,
    cheap_texts,
    doubles,
    huge_text,
    int32s,
    int64s,
    kwargs,
    model_names,
    mostly,
    optional,
    outside,
    request_ids,
    texts,
)
from tests.fuzz.media import MediaFile, media_files, valid_media
from tests.fuzz.structured import structured_fields, tool_turns

ROLES = ("user", "user", "system", "assistant", "tool")
# the gateway's defaults: a valid max_tokens / steps above 3 / 2 would make a request slow, not wrong
MAX_TOKENS_LIMIT = GatewayConfig.__dataclass_fields__["max_tokens_limit"].default
MAX_IMAGE_STEPS = GatewayConfig.__dataclass_fields__["max_image_steps"].default


def media_messages(media: st.SearchStrategy[MediaFile] | None = None) -> st.SearchStrategy[pb.Media]:
    files = (
        media
        if media is not None
        else mostly(st.sampled_from(("image", "audio", "video")).flatmap(valid_media), media_files(), odds=3)
    )
    return files.map(lambda m: pb.Media(data=m.data, mime_type=m.mime))


@st.composite
def content_parts(draw) -> pb.ContentPart:
    kind = draw(st.sampled_from(("text", "text", "text", "image", "audio", "video", "unset")))
    if kind == "text":
        return pb.ContentPart(text=draw(texts()))
    if kind == "unset":
        return pb.ContentPart()
    file = draw(mostly(valid_media(kind), media_files(), odds=3))
    return pb.ContentPart(**{file.kind: pb.Media(data=file.data, mime_type=file.mime)})


@st.composite
def chat_messages(draw) -> pb.Message:
    role = draw(mostly(st.sampled_from(ROLES), st.sampled_from(("", "USER", "robot", "user "))))
    count = draw(mostly(st.integers(1, 3), st.sampled_from((0, 200, 3000)), odds=12))
    if count > 3:  # a huge repeated field: the same text part many times
        return pb.Message(role=role, content=[pb.ContentPart(text="a")] * count)
    return pb.Message(role=role, content=draw(st.lists(content_parts(), min_size=count, max_size=count)))


def stop_lists() -> st.SearchStrategy[list[str]]:
    return mostly(
        st.lists(st.text(min_size=1, max_size=8), max_size=3),
        st.one_of(
            st.lists(st.text(max_size=3), min_size=17, max_size=40), st.just([""]), st.just(["x" * 10_000])
        ),
    )


def token_id_lists() -> st.SearchStrategy[list[int]]:
    return mostly(
        st.lists(st.integers(0, 3000), max_size=4),
        st.one_of(st.lists(int32s(st.integers(-5, 10**6)), max_size=8), st.just(list(range(20_000)))),
    )


@st.composite
def sampling_params(draw, single: bool = False) -> pb.SamplingParams:
    """Sampling with max_tokens always set (cheap when valid); `single`: n mostly 1."""
    n_valid = st.just(1) if single else st.integers(1, 2)
    return pb.SamplingParams(
        stop=draw(stop_lists()),
        stop_token_ids=draw(token_id_lists()),
        **kwargs(
            max_tokens=draw(mostly(st.integers(1, 3), outside(1, MAX_TOKENS_LIMIT))),
            temperature=draw(optional(doubles(0.0, 2.0))),
            top_p=draw(optional(doubles(1e-3, 1.0))),
            top_k=draw(optional(int32s(st.integers(-1, 50)))),
            min_p=draw(optional(doubles(0.0, 1.0))),
            seed=draw(optional(int64s(st.integers(0, 2**32)))),
            repetition_penalty=draw(optional(doubles(0.5, 2.0))),
            presence_penalty=draw(optional(doubles(-2.0, 2.0))),
            frequency_penalty=draw(optional(doubles(-2.0, 2.0))),
            n=draw(optional(int32s(n_valid))),
            min_tokens=draw(optional(int32s(st.integers(0, 1)))),
            ignore_eos=draw(optional(st.booleans())),
        ),
    )


@st.composite
def reasoning_options(draw) -> pb.ReasoningOptions:
    return pb.ReasoningOptions(
        **kwargs(
            enable_thinking=draw(optional(st.booleans())),
            thinking_budget=draw(optional(int32s(st.integers(0, 4)))),
        )
    )


@st.composite
def diffusion_options(draw) -> pb.DiffusionOptions:
    return pb.DiffusionOptions(
        decoder=draw(st.sampled_from(("", "llada2", "threshold", "hierarchy", "credit", "nope"))),
        **kwargs(
            block_length=draw(optional(int32s(st.integers(1, 1024)))),
            steps=draw(optional(int32s(st.integers(1, 64)))),
            threshold=draw(optional(doubles(0.0, 1.0))),
            low_threshold=draw(optional(doubles(0.0, 1.0))),
            eos_early_stop=draw(optional(st.booleans())),
            prefix_cache=draw(optional(st.booleans())),
        ),
    )


FORMATS = ("", "wav", "pcm", "opus", "WAV", " opus ", "mp3", "flac")
RATES = (8000, 11025, 16000, 22050, 24000, 44100, 48000, 7, 0, -1, 96000, 12345)


def voices(target: Target) -> st.SearchStrategy[str]:
    return mostly(
        st.sampled_from(("", *target.voices)), st.one_of(st.text(max_size=12), huge_text(3000, 5000))
    )


@st.composite
def speech_fields(draw, target: Target) -> dict:
    """The fields SpeechOptions and SynthesizeSpeechRequest share (same names, same ranges)."""
    return {
        "voice": draw(voices(target)),
        "format": draw(mostly(st.sampled_from(FORMATS[:4]), st.sampled_from(FORMATS))),
        "instruction": draw(mostly(st.just(""), texts())),
        **kwargs(
            sample_rate=draw(optional(int32s(st.sampled_from(RATES)))),
            speed=draw(optional(doubles(0.5, 2.0))),
            seed=draw(optional(int64s(st.integers(0, 2**32)))),
            temperature=draw(optional(doubles(0.0, 2.0))),
            guidance_scale=draw(optional(doubles(0.0, 20.0))),
        ),
    }


@st.composite
def generate_requests(draw, target: Target) -> pb.GenerateRequest:
    shape = draw(mostly(st.sampled_from(("messages", "prompt")), st.sampled_from(("both", "neither"))))
    messages = (
        draw(st.lists(chat_messages(), min_size=1, max_size=3)) if shape in ("messages", "both") else []
    )
    structured = draw(structured_fields())
    if messages and structured and draw(st.booleans()):
        messages += draw(tool_turns())
    prompt = draw(texts()) if shape in ("prompt", "both") else ""
    optional_parts = {
        "reasoning": draw(optional(reasoning_options())),
        "diffusion": draw(mostly(st.none(), diffusion_options())),
        "speech": draw(mostly(st.none(), speech_fields(target).map(lambda f: pb.SpeechOptions(**f)))),
    }
    return pb.GenerateRequest(
        model=draw(model_names(target.served, target)),
        messages=messages,
        prompt=prompt,
        sampling=draw(sampling_params(single=optional_parts["speech"] is not None)),
        request_id=draw(request_ids()),
        priority=draw(int32s(st.integers(-5, 5))),
        **kwargs(**optional_parts),
        **structured,
    )


@st.composite
def transcribe_requests(draw, target: Target, audio: st.SearchStrategy[MediaFile] | None = None):
    audio = audio if audio is not None else mostly(valid_media("audio"), media_files(), odds=3)
    return pb.TranscribeRequest(
        model=draw(model_names(target.media, target)),
        audio=draw(mostly(media_messages(audio), st.just(pb.Media()), odds=12)),
        sampling=draw(sampling_params(single=True)),
        request_id=draw(request_ids()),
        priority=draw(int32s(st.integers(-5, 5))),
    )


SIZES = ((64, 64), (128, 96), (256, 256), (96, 300))
BAD_SIZES = ((0, 64), (-1, 64), (4097, 4097), (4096, 4096), (64, 1024), (1, 1), (0, 0), (2**31 - 1, 1))


@st.composite
def image_requests(draw, target: Target, reference: st.SearchStrategy[MediaFile] | None = None):
    width, height = draw(mostly(st.sampled_from(SIZES), st.sampled_from(BAD_SIZES), odds=8))
    num_images = draw(int32s(st.sampled_from((0, 1))))
    ref = reference if reference is not None else mostly(valid_media("image"), media_files(), odds=3)
    return pb.GenerateImageRequest(
        model=draw(model_names(target.image, target)),
        prompt=draw(cheap_texts()),
        negative_prompt=draw(mostly(st.just(""), texts())),
        width=width,
        height=height,
        num_images=num_images,
        reference_image=draw(mostly(st.just(pb.Media()), media_messages(ref), odds=3)),
        output_format=draw(mostly(st.sampled_from(("", "png", "jpeg", "webp")), st.text(max_size=6))),
        request_id=draw(request_ids()),
        priority=draw(int32s(st.integers(-5, 5))),
        **kwargs(
            steps=draw(mostly(st.integers(1, 2), outside(1, MAX_IMAGE_STEPS))),
            guidance_scale=draw(optional(doubles(0.0, 50.0))),
            image_guidance_scale=draw(optional(doubles(0.0, 50.0))),
            seed=draw(optional(int64s(st.integers(0, 2**32)))),
            quality=draw(mostly(st.none(), int32s(st.integers(1, 100)))),
        ),
    )


@st.composite
def speech_requests(draw, target: Target, clip: st.SearchStrategy[MediaFile] | None = None):
    fields = draw(speech_fields(target))
    clip = clip if clip is not None else mostly(valid_media("audio"), media_files(), odds=3)
    speaker = draw(mostly(st.just(pb.Media()), media_messages(clip), odds=3))
    if speaker.data and draw(st.integers(0, 3)):
        fields["voice"] = ""  # cloning: mostly without a preset (both set is an error)
    return pb.SynthesizeSpeechRequest(
        model=draw(model_names(target.speech, target)),
        text=draw(cheap_texts()),
        speaker_audio=speaker,
        speaker_text=draw(mostly(st.just(""), texts())),
        request_id=draw(request_ids()),
        priority=draw(int32s(st.integers(-5, 5))),
        **fields,
    )
