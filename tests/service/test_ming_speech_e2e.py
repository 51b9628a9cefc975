"""Ming 2.0 speech out through the whole service: real Redis, `bailing gateway` + `bailing worker
--family ming` subprocesses on the demo Ming-flash-omni 2.0 checkpoint (2.0 thinker, talker, AudioVAE,
CAM++, voices), real gRPC.

SynthesizeSpeech returns a WAV that soundfile reads at the stated rate, longer for longer text; the
stream's first chunk comes before its end and its chunks assembled are the unary call's bytes (same
seed); a chat reply spoken while it is written (GenerateStream with `speech`); image understanding
with a real JPEG on the same worker; bad input is INVALID_ARGUMENT and the worker keeps serving; a
cancelled stream frees the talker; a batch with a speech item; the `bailing speak` CLI.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import grpc
import pytest
import soundfile
from google.protobuf import json_format

from gateway.api import pb, pb_grpc
from pipelines.audio_files import assemble
from tests.models.ming.processing_media import gradient_jpeg
from tests.service.procs import Processes

pytestmark = pytest.mark.slow
MODEL = "ming2-say"
SHORT = "Hello there."
LONG = "Hello there. The weather is fine today, so let us walk in the park. 今天天气很好。"


@pytest.fixture(scope="module")
def service(redis_url, tmp_path_factory, demo_ming2):
    procs = Processes(redis_url, tmp_path_factory.mktemp("ming-speech-logs"))
    try:
        worker = procs.worker(demo_ming2, MODEL, family="ming", timeout=240)
        yield procs.gateway(MODEL), worker
    finally:
        procs.close()


@pytest.fixture()
def stub(service):
    with grpc.insecure_channel(service[0]) as ch:
        yield pb_grpc.InferenceStub(ch)


def say(text: str = SHORT, **fields) -> pb.SynthesizeSpeechRequest:
    return pb.SynthesizeSpeechRequest(model=MODEL, text=text, **({"seed": 7} | fields))


def read_wav(data: bytes) -> tuple[int, int]:
    samples, rate = soundfile.read(io.BytesIO(data))
    return rate, samples.shape[0]


def test_list_models_shows_audio_output_and_voices(stub):
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
    assert list(info.outputs) == ["text", "image", "audio"]
    assert list(info.voices)[:1] == ["DB30"] and len(info.voices) >= 2


def test_synthesize_speech_gives_a_wav_at_its_rate_longer_for_longer_text(stub):
    short = stub.SynthesizeSpeech(say(), timeout=120)
    rate, frames = read_wav(short.audio)
    assert (short.format, short.mime_type, rate) == ("wav", "audio/wav", short.sample_rate)
    assert frames == round(short.duration_s * rate) and short.duration_s > 0.5
    assert short.finish_reason == "stop" and short.seed == 7 and short.usage.prompt_tokens > 0
    assert short.usage.chunks >= 2 and short.timing.time_to_first_token_s > 0
    longer = stub.SynthesizeSpeech(say(LONG), timeout=180)
    assert longer.duration_s > 1.5 * short.duration_s
    assert read_wav(longer.audio)[1] == round(longer.duration_s * longer.sample_rate)


def test_the_stream_starts_before_its_end_and_equals_the_unary_bytes(stub):
    started = time.monotonic()
    chunks, arrivals, last = [], [], None
    for message in stub.SynthesizeSpeechStream(say(LONG, seed=3), timeout=180):
        if message.last:
            last = message
        else:
            chunks.append(message)
            arrivals.append(time.monotonic() - started)
    ended = time.monotonic() - started
    assert last is not None and [c.index for c in chunks] == list(range(len(chunks))) == list(
        range(last.summary.usage.chunks)
    )
    assert arrivals[0] < 0.8 * ended  # the first audio came well before the clip was done
    audio_s = last.summary.duration_s
    print(f"\nstream: first audio {arrivals[0]:.2f} s, end {ended:.2f} s, {audio_s:.2f} s of audio")
    whole = stub.SynthesizeSpeech(say(LONG, seed=3), timeout=180)
    assert assemble("wav", last.summary.sample_rate, [c.audio for c in chunks]) == whole.audio


def test_opus_resampled_is_an_ogg_file(stub):
    out = stub.SynthesizeSpeech(say(format="opus", sample_rate=24000, speed=1.25), timeout=120)
    assert out.audio[:4] == b"OggS" and out.mime_type == "audio/ogg;codecs=opus"
    samples, rate = soundfile.read(io.BytesIO(out.audio))
    assert rate == out.sample_rate == 24000  # the OpusHead's input rate
    assert samples.shape[0] == pytest.approx(out.duration_s * rate, rel=0.02)


def test_a_chat_reply_spoken_while_it_is_written(stub):
    request = pb.GenerateRequest(
        model=MODEL, prompt="Tell me about the park.", sampling=pb.SamplingParams(max_tokens=16, seed=1),
        speech=pb.SpeechOptions(seed=2, format="pcm"),
    )  # fmt: skip
    kinds, text, audio, summary = [], "", [], None
    for chunk in stub.GenerateStream(request, timeout=180):
        text += chunk.text
        if chunk.HasField("audio"):
            if chunk.audio.last:
                summary = chunk.audio.summary
            else:
                audio.append(chunk.audio.audio)
            kinds.append("audio")
        elif chunk.text:
            kinds.append("text")
    assert text and kinds.index("text") < kinds.index("audio")  # text streams first, audio follows
    assert summary is not None and summary.usage.chunks == len(audio) > 0
    assert sum(len(a) for a in audio) == 2 * round(summary.duration_s * summary.sample_rate)
    unary = stub.Generate(request, timeout=180)
    assert unary.text == text and unary.speech.usage.chunks == len(audio)


def test_image_understanding_with_a_real_jpeg(stub):
    look = pb.GenerateRequest(
        model=MODEL,
        messages=[pb.Message(role="user", content=[
            pb.ContentPart(image=pb.Media(data=gradient_jpeg(), mime_type="image/jpeg")),
            pb.ContentPart(text="What is in this picture?"),
        ])],
        sampling=pb.SamplingParams(max_tokens=4),
    )  # fmt: skip
    out = stub.Generate(look, timeout=120)
    assert out.usage.prompt_tokens > 20 and out.usage.completion_tokens == 4


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"text": ""}, "text"),
        ({"voice": "nobody"}, "voice"),
        ({"sample_rate": 7000}, "sample_rate"),
        ({"speed": 5.0}, "speed"),
        ({"format": "mp3"}, "format"),
        ({"speaker_audio": pb.Media(data=b"RIFF not really", mime_type="audio/wav")}, "speaker_audio"),
    ],
)
def test_bad_requests_are_invalid_and_the_worker_keeps_serving(stub, fields, named):
    with pytest.raises(grpc.RpcError) as err:
        stub.SynthesizeSpeech(say(**fields), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and named in err.value.details()
    assert stub.SynthesizeSpeech(say("Hi."), timeout=120).audio


def test_a_cancelled_stream_frees_the_talker(stub, service):
    worker = service[1]
    call = stub.SynthesizeSpeechStream(say(LONG * 3), timeout=180)
    for message in call:
        if not message.last:
            break
    call.cancel()
    until = time.monotonic() + 10
    while worker.metric("bailing_worker_speech_jobs") > 0 and time.monotonic() < until:
        time.sleep(0.1)
    assert worker.metric("bailing_worker_speech_jobs") == 0
    assert stub.SynthesizeSpeech(say("Next."), timeout=120).audio


def test_a_batch_with_a_speech_item(stub, service):
    from tests.service.test_batch_e2e import wait_batch

    with grpc.insecure_channel(service[0]) as channel:
        jobs = pb_grpc.JobsStub(channel)
        body = json_format.MessageToDict(say(seed=9))
        line = json.dumps({"custom_id": "s", "method": "SynthesizeSpeech", "body": body}).encode()
        batch = jobs.CreateBatch(pb.CreateBatchRequest(model=MODEL, jsonl=line), timeout=60)
        assert wait_batch(jobs, batch.id, timeout=300).counts.completed == 1
        (result,) = jobs.GetBatchResults(pb.GetBatchResultsRequest(id=batch.id), timeout=60)
    clip = result.speech_response
    assert clip.format == "wav" and clip.seed == 9 and read_wav(clip.audio)[0] == clip.sample_rate
    assert clip.audio == stub.SynthesizeSpeech(say(seed=9), timeout=120).audio


def test_the_speak_cli(service, tmp_path):
    out = tmp_path / "hello.wav"
    cmd = [sys.executable, "-m", "bailing.cli", "speak", "--address", service[0], "--model", MODEL]
    done = subprocess.run([*cmd, "--seed", "1", "-o", str(out), SHORT], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    rate, frames = read_wav(out.read_bytes())
    assert rate > 0 and frames > 0
    bad_args = [*cmd, "--speed", "9", "-o", str(tmp_path / "x.wav"), "a"]
    bad = subprocess.run(bad_args, capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"speed" in bad.stderr


def test_chat_with_speak_gives_text_and_audio(service, tmp_path):
    out = tmp_path / "answer.wav"
    cmd = [sys.executable, "-m", "bailing.cli", "chat", "--address", service[0], "--model", MODEL]
    done = subprocess.run(
        [*cmd, "--max-tokens", "12", "--speak", str(out), "Tell me about the park."],
        capture_output=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.strip()  # the answer's text
    rate, frames = read_wav(out.read_bytes())
    assert rate > 0 and frames > 0
