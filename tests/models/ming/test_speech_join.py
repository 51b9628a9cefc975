"""Continuous batching of the talker: a request's latents are the same (fp32, 1e-5) whether it runs alone,
batched from the start or joins a running batch mid-way; per-request seeds make its draws independent of
its neighbours'; dropped rows leave at once and unused cache columns are cut."""

from __future__ import annotations

import pytest
import torch

from models.ming.speech.cfm import FlowSampling
from models.ming.speech.talker_generator import TalkerBatch, TalkerGenerator, TalkerRequest
from models.ming.speech.talker_loading import load_talker
from models.ming.speech.talker_prompt import initial_history
from tests.models.ming.speech_golden import TALKER, available, maxdiff, tensors

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
CPU = torch.device("cpu")
TOL = 1e-5
# (prompt length, seed, steps): different lengths exercise the left padding of prompts and caches
SPECS = [(160, 1, 7), (131, 2, 5), (150, 3, 6), (140, 4, 4)]


@pytest.fixture(scope="module")
def gen():
    return TalkerGenerator(load_talker(TALKER, CPU, torch.float32))


def request(length: int, seed: int, steps: int, temperature: float = 0.7) -> TalkerRequest:
    g = tensors()
    history = initial_history(g["inputs.prompt_wav_lat"][0], 32, 64, CPU, torch.float32)
    return TalkerRequest(
        g["gen_det.inputs_embeds"][0][:length],
        history,
        sampling=FlowSampling(temperature=temperature),
        generator=torch.Generator().manual_seed(seed),
        max_steps=steps,
        min_new_tokens=100,  # the step limits decide the lengths
    )


class Recorder:
    """Each request's patches as the steps hand them out (by request object)."""

    def __init__(self) -> None:
        self.patches: dict[int, list[torch.Tensor]] = {}

    def step(self, gen: TalkerGenerator, batch: TalkerBatch) -> None:
        out = gen.step(batch)
        for row, i in enumerate(out.rows):
            self.patches.setdefault(id(batch.requests[i]), []).append(out.latents[row])

    def latents(self, r: TalkerRequest) -> torch.Tensor:
        return torch.cat(self.patches[id(r)])


def alone(gen, spec) -> torch.Tensor:
    return gen.generate([request(*spec)])[0]


def test_joined_mid_way_equals_alone_and_batched(gen):
    reference = [alone(gen, s) for s in SPECS]
    batched = gen.generate([request(*s) for s in SPECS])
    rec, reqs = Recorder(), [request(*s) for s in SPECS]
    batch = gen.start(reqs[:1])
    for _ in range(2):
        rec.step(gen, batch)
    newcomers = gen.start(reqs[1:3])  # two newcomers of other prompt lengths, prefilled together
    rec.step(gen, newcomers)
    rec.step(gen, batch)
    batch = gen.join(batch, newcomers)
    rec.step(gen, batch)
    late = gen.start(reqs[3:])  # a third wave joins the merged batch
    rec.step(gen, late)
    batch = gen.join(batch, late)
    while not batch.done:
        rec.step(gen, batch)
    for spec, r, ref, bat in zip(SPECS, reqs, reference, batched, strict=True):
        got = rec.latents(r)
        assert got.shape == ref.shape == (4 * spec[2], 64)
        assert maxdiff(got, ref) < TOL and maxdiff(bat, ref) < TOL


def test_seeds_make_requests_independent_of_neighbours(gen):
    """Same seed: the same latents whoever runs beside; another seed: other latents."""
    ref = alone(gen, SPECS[0])
    for neighbour_seed in (11, 12):
        rows = gen.generate([request(*SPECS[0]), request(150, neighbour_seed, 7)])
        assert maxdiff(rows[0], ref) < TOL
    other = gen.generate([request(160, 99, 7)])[0]
    assert maxdiff(other, ref) > 1e-3


def test_join_keeps_the_requests_own_stop_rule(gen):
    """min_new_tokens counts a request's own steps, not the batch's."""
    late = request(131, 2, 50)
    late.min_new_tokens = 0
    batch = gen.start([request(160, 1, 20)])
    for _ in range(5):
        gen.step(batch)
    newcomers = gen.start([late])
    gen.step(newcomers)
    batch = gen.join(batch, newcomers)
    assert [len(p) for p in batch.latents] == [5, 1]
    assert batch.requests[1] is late and batch.rows == [0, 1]


def test_drop_removes_rows_and_trims_the_cache(gen):
    rec, reqs = Recorder(), [request(160, 1, 9), request(131, 2, 9)]
    batch = gen.start(reqs)
    rec.step(gen, batch)
    assert batch.cache.get_seq_length() == 160
    gen.drop(batch, {0})  # the longer prompt leaves: its padding-only columns go with it
    assert batch.rows == [1] and batch.stop_reasons[0] == "dropped"
    assert batch.cache.get_seq_length() == 131 and batch.attention_mask.shape == (1, 132)
    while not batch.done:
        rec.step(gen, batch)
    assert maxdiff(rec.latents(reqs[1]), alone(gen, (131, 2, 9))) < TOL


def test_join_needs_batches_past_their_prefill(gen):
    running = gen.start([request(160, 1, 5)])
    fresh = gen.start([request(131, 2, 5)])
    gen.step(running)
    with pytest.raises(ValueError, match="prefill"):
        gen.join(running, fresh)
    done = gen.start([request(131, 2, 1)])
    gen.step(done)  # finished after one step: joining it changes nothing
    assert done.done and gen.join(running, done) is running


def test_stepping_a_running_batch_and_newcomers_together_equals_alone(gen):
    """One flow-head call over the running rows and the newcomers' prefill rows (`step_together`)."""
    running_reqs = [request(*SPECS[0]), request(*SPECS[1])]
    running = gen.start(running_reqs)
    patches: dict[int, list[torch.Tensor]] = {}

    def record(batch, out):
        for row, i in enumerate(out.rows):
            patches.setdefault(id(batch.requests[i]), []).append(out.latents[row])

    record(running, gen.step(running))
    newcomer_reqs = [request(*SPECS[2]), request(*SPECS[3])]
    newcomers = gen.start(newcomer_reqs)
    outs = gen.step_together([running, newcomers])
    assert [len(o.rows) for o in outs] == [2, 2]
    for batch, out in zip([running, newcomers], outs, strict=True):
        record(batch, out)
    merged = gen.join(running, newcomers)
    while not merged.done:
        out = gen.step(merged)
        record(merged, out)
    for spec, r in zip(SPECS, running_reqs + newcomer_reqs, strict=True):
        assert maxdiff(torch.cat(patches[id(r)]), alone(gen, spec)) <= TOL


def test_step_together_refuses_a_finished_batch(gen):
    batch = gen.start([request(131, 2, 1)])
    gen.step(batch)
    assert batch.done
    with pytest.raises(ValueError, match="not finished"):
        gen.step_together([batch])
