"""LLaDA2 on the worker side: `pipelines.text.prepare` turns a job's diffusion options into engine
DiffusionParams (demo LLaDA2 and Ling engines in process), and a real `bailing worker --family llada2`
(real Redis, real Celery) streams finished blocks and reports forwards in its DONE usage."""

from __future__ import annotations

import json

import pytest

from engine import LLM, DiffusionParams, SamplingParams
from engine.engine import EngineConfig, LLMEngine
from engine.errors import RequestError
from models.family import get_family
from pipelines import text
from pipelines.protocol import ErrorCode, EventType, GenerateJob, Sampling, queue_name
from tests.workers.helpers import KV_BYTES, WorkerProcess, check_stream_shape, new_id, read_events, send

NAME = "llada2-jobs"  # a queue of this module's own
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def offline(demo_llada2):
    return LLM(demo_llada2, kv_cache_bytes=KV_BYTES)


@pytest.fixture(scope="module")
def ling_engine(demo_ling):
    return LLMEngine(demo_ling, config=EngineConfig(kv_cache_bytes=8 << 20))


def job(diffusion=None, **kw) -> GenerateJob:
    kw.setdefault("prompt", PROMPT)
    return GenerateJob(request_id=new_id(), model=NAME, diffusion=diffusion, **kw)


def prepare(j: GenerateJob, engine, family: str = "llada2", **kw) -> text.Prepared:
    return text.prepare(j, engine, get_family(family), {}, **kw)


# ---- prepare(), in process ---------------------------------------------------------------------------
def test_options_become_diffusion_params_with_the_token_ids_left_to_the_engine(offline):
    options = {"block_length": 8, "steps": 4, "threshold": 0.9, "decoder": "threshold"}
    options |= {"eos_early_stop": True, "prefix_cache": False}
    j = job(options, sampling=Sampling(max_tokens=16))
    j = GenerateJob.from_dict(json.loads(json.dumps(j.to_dict())))  # as Celery delivers it
    p = prepare(j, offline.engine)
    assert p.params.diffusion == DiffusionParams(**options)
    assert p.params.diffusion.mask_token_id is None and p.params.diffusion.eos_token_id is None
    assert p.params.max_tokens == 16  # the generation length


def test_a_diffusion_model_decodes_greedily_unless_told_and_without_logits_processors(offline):
    p = prepare(job(), offline.engine, processor_factories=[lambda tok: lambda ids, logits: logits])
    assert p.params.diffusion is None  # the engine's defaults
    assert p.params.temperature == 0.0 and p.params.logits_processors == []
    assert prepare(job({}, sampling=Sampling(temperature=0.7)), offline.engine).params.temperature == 0.7
    assert prepare(job({}), offline.engine).params.diffusion == DiffusionParams()


def test_hierarchy_gets_the_engines_low_threshold_default(offline):
    p = prepare(job({"decoder": "hierarchy", "threshold": 0.3}), offline.engine)
    assert p.params.diffusion.low_threshold == 0.3  # min(0.4, threshold)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 2.0}, "threshold must be in"),
        ({"block_length": 0}, "block_length must be in"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"decoder": "magic"}, "decoder must be one of"),
        ({"low_threshold": 0.3}, "low_threshold only applies to decoder 'hierarchy'"),
        ({"decoder": "hierarchy", "threshold": 0.5, "low_threshold": 0.9}, "low_threshold .* must be <="),
        ({"blocks": 8}, "diffusion options must be among"),
        ({"mask_token_id": 3}, "diffusion options must be among"),  # resolved by the engine only
    ],
)
def test_bad_options_raise_request_errors_naming_the_field(offline, options, message):
    with pytest.raises(RequestError, match=message):
        prepare(job(options), offline.engine)


def test_llada2_has_no_reasoning(offline):
    assert get_family("llada2").reasoning is None
    with pytest.raises(
        RequestError, match="applies to reasoning models; model 'llada2-jobs' answers directly"
    ):
        prepare(job(thinking_budget=8), offline.engine)


def test_an_autoregressive_model_refuses_diffusion_options(ling_engine):
    assert not ling_engine.model.diffusion
    with pytest.raises(RequestError, match="model 'llada2-jobs' is autoregressive"):
        prepare(job({"block_length": 8}), ling_engine, family="ling")
    assert prepare(job(), ling_engine, family="ling").params.diffusion is None


# ---- a real worker -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker(redis_url, demo_llada2, tmp_path_factory):
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    w = WorkerProcess(redis_url, demo_llada2, log, NAME, family="llada2")
    try:
        w.wait_registered()
        yield w
    finally:
        w.close()


def test_worker_streams_blocks_and_reports_forwards(worker, sender, rds, offline):
    j = job({"block_length": 8, "threshold": 0.9}, sampling=Sampling(max_tokens=32, temperature=0.0))
    send(sender, j)
    events = read_events(rds, j.request_id, timeout=120)
    check_stream_shape(events, EventType.DONE)
    d = DiffusionParams(block_length=8, threshold=0.9)
    want = offline.generate(PROMPT, SamplingParams(max_tokens=32, temperature=0.0, diffusion=d))[0]
    deltas = [e.text for e in events if e.type == EventType.DELTA and e.text]
    assert "".join(deltas) == want.text and len(deltas) >= 2  # a delta per finished block
    u = events[-1].usage
    assert (u.completion_tokens, u.forwards) == (len(want.token_ids), want.num_forwards)
    assert 0 < u.forwards < u.completion_tokens
    assert u.tokens_per_forward == pytest.approx(u.completion_tokens / u.forwards)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: job({"threshold": 2.0}), "threshold must be in"),
        (lambda: job({"blocks": 8}), "diffusion options must be among"),
        (lambda: job({}, sampling=Sampling(n=2)), "n=1"),
        (lambda: job(thinking_budget=4), "answers directly"),
    ],
)
def test_worker_answers_bad_jobs_with_invalid_argument(worker, sender, rds, make, message):
    import re

    rid = send(sender, make(), queue=queue_name(NAME))
    events = read_events(rds, rid, timeout=60)
    check_stream_shape(events, EventType.ERROR)
    assert events[-1].error_code == ErrorCode.INVALID_ARGUMENT
    assert re.search(message, events[-1].message), events[-1].message
    assert worker.proc.poll() is None
