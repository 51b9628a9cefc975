"""The speech stage on the tiny speaking checkpoint: deterministic chunks (same text, voice and seed ->
the same PCM bytes), streamed decode on the fixed schedule == one whole decode, continuous batching
(a request's latents the same alone or with newcomers joining mid-way), segments in order, the audio
budget, cancel within one step, and a failing talker step that fails only its requests."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from models.ming.speech.speech_model import SpeechModel
from pipelines.audio_output import AudioEncoder
from pipelines.protocol import SpeechOptions
from pipelines.speech_synthesis import SpeechLimits, settings
from tests.models.ming.speech_checkpoint import write_speech_checkpoint
from tests.models.ming.speech_golden import available
from workers.speech_decode import SegmentAudio, decode_point
from workers.speech_stage import SpeechStage

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
ZH = "今天天气很好，我们一起去公园散步吧。"
EN = "Hello there, how are you today?"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = write_speech_checkpoint(tmp_path_factory.mktemp("speaking"))
    return SpeechModel.load(root, torch.device("cpu"), torch.float32)


@pytest.fixture()
def stage(model):
    stage = SpeechStage(model)
    stage.start()
    yield stage
    stage.stop()


def opts(model, **options):
    return settings(SpeechOptions(**({"seed": 7, "temperature": 0.5} | options)), model, SpeechLimits())


def submit(stage, texts, s, stopped=lambda: False):
    ticket = stage.submit("r", s, stopped)
    for text in texts:
        stage.add(ticket, text)
    stage.close(ticket)
    return ticket


def drain(ticket, timeout: float = 60.0):
    """Every PatchOut of the ticket, until its end."""
    items, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        item = ticket.out.get(timeout=timeout)
        if item is None:
            return items
        items.append(item)
    raise TimeoutError


def latents(items, segment: int = 0) -> torch.Tensor:
    return torch.stack([i.latents for i in items if i.segment.index == segment])  # (n, P, C)


def pcm_chunks(model, items) -> list[bytes]:
    """Chunks as a speech job makes them: decode on the schedule, trim, encode as pcm."""
    encoder, audio, segment, out = AudioEncoder(model.sample_rate, model.sample_rate, "pcm"), None, -1, []
    for item in items:
        if item.segment.index != segment:
            audio, segment = SegmentAudio(model), item.segment.index
        samples = audio.add(item.latents, item.last)
        if samples is not None:
            out.append(encoder.encode(samples).data)
    return out


def test_the_stage_decodes_on_the_schedule_what_a_fresh_decoder_would(model, stage):
    items = drain(submit(stage, [ZH, EN], opts(model)))
    encoder = AudioEncoder(model.sample_rate, model.sample_rate, "pcm")
    staged = [encoder.encode(i.samples).data for i in items if i.samples is not None]
    assert staged == pcm_chunks(model, items) and len(staged) > 2
    for segment in (0, 1):
        counts = [n + 1 for n, i in enumerate(x for x in items if x.segment.index == segment)]
        decoded = [i.samples is not None for i in items if i.segment.index == segment]
        assert decoded == [decode_point(n) or n == counts[-1] for n in counts]


def test_the_decode_schedule_depends_on_the_patch_count_only():
    assert [n for n in range(1, 41) if decode_point(n)] == [1, 2, 4, 8, 16, 24, 32, 40]


def test_same_text_voice_and_seed_give_the_same_bytes(model, stage):
    runs = [pcm_chunks(model, drain(submit(stage, [ZH, EN], opts(model)))) for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) > 2
    other = pcm_chunks(model, drain(submit(stage, [ZH, EN], opts(model, seed=8))))
    assert other != runs[0]


def test_streamed_decode_equals_the_whole_decode(model, stage):
    items = drain(submit(stage, [ZH], opts(model)))
    streamed = np.frombuffer(b"".join(pcm_chunks(model, items)), "<i2").astype(np.int32)
    whole = model.vae.decode_whole(latents(items).reshape(1, -1, 64))[0].numpy()
    expected = np.clip(np.rint(whole * 32767), -32768, 32767).astype(np.int32)
    assert streamed.shape == expected.shape  # no silent tail in this tiny model's audio
    assert np.abs(streamed - expected).max() <= 1  # float rounding of the chunked decode, at most 1 LSB


def test_segments_run_in_order_each_to_its_end(model, stage):
    items = drain(submit(stage, [ZH, EN, "好的。"], opts(model)))
    order = [i.segment.index for i in items]
    assert order == sorted(order) and set(order) == {0, 1, 2}
    ends = [i for i in items if i.last]
    assert [i.segment.index for i in ends] == [0, 1, 2] and all(i.reason in ("stop", "length") for i in ends)
    assert [i.segment.text for i in ends] == [ZH, EN, "好的。"]


def test_newcomers_join_without_changing_anyones_latents(model):
    sizes: list[int] = []
    stage = SpeechStage(model, on_forward=lambda rows, seconds: sizes.append(rows))
    stage.start()
    try:
        check_join(model, stage)
    finally:
        stage.stop()
    assert max(sizes) == 3  # all three in one batched step


def check_join(model, stage):
    alone_a = latents(drain(submit(stage, [ZH], opts(model))))
    alone_b = latents(drain(submit(stage, [EN], opts(model, seed=3, voice="bright"))))
    first = submit(stage, [ZH], opts(model))
    while first.steps < 3:  # let it run a few steps, then others join
        time.sleep(0.001)
    second = submit(stage, [EN], opts(model, seed=3, voice="bright"))
    third = submit(stage, [EN], opts(model, seed=4))
    got_a, got_b = latents(drain(first)), latents(drain(second))
    drain(third)
    assert got_a.shape == alone_a.shape and (got_a - alone_a).abs().max() < 1e-5
    assert got_b.shape == alone_b.shape and (got_b - alone_b).abs().max() < 1e-5


@pytest.mark.parametrize("texts", [[ZH], [ZH, EN]])
def test_the_audio_budget_cuts_the_text_short(model, stage, texts):
    s = dataclasses.replace(opts(model), max_patches=5)
    ticket = submit(stage, texts, s)
    items = drain(ticket)
    assert len(items) == 5 and items[-1].last and items[-1].reason == "length"
    assert ticket.outcome == "finished" and ticket.truncated
    full = submit(stage, [ZH], opts(model))
    drain(full)
    assert not full.truncated


def test_cancel_stops_within_one_step(model, stage):
    flag = threading.Event()
    ticket = submit(stage, [ZH * 3], opts(model), stopped=flag.is_set)
    other = submit(stage, [ZH * 3], opts(model, seed=1))
    while ticket.steps < 4:
        time.sleep(0.001)
    flag.set()
    seen = ticket.steps
    items = drain(ticket)
    assert ticket.outcome == "stopped" and len(items) <= seen + 1
    assert len(stage) == 1  # the other one runs on
    drain(other)
    assert other.outcome == "finished"


def test_a_failing_talker_step_fails_its_requests_only(model, stage, monkeypatch):
    good = stage.generator.step_together
    calls = {"n": 0}

    def flaky(batches):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return good(batches)

    monkeypatch.setattr(stage.generator, "step_together", flaky)
    ticket = submit(stage, [ZH], opts(model))
    drain(ticket)
    assert ticket.outcome == "failed" and "illegal memory" in str(ticket.error)
    monkeypatch.setattr(stage.generator, "step_together", good)
    after = submit(stage, [EN], opts(model))
    drain(after)
    assert after.outcome == "finished" and len(stage) == 0


def test_stop_ends_tickets_in_flight(model):
    stage = SpeechStage(model)
    stage.start()
    ticket = stage.submit("r", opts(model), lambda: False)  # waits for text that never comes
    stage.stop()
    assert drain(ticket) == [] and ticket.outcome == "stopped"
    late = stage.submit("r2", opts(model), lambda: False)
    assert late.outcome == "stopped"
