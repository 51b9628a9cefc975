"""engine.passing_thread: work handed to a thread that ends with it, and the engine's use of it.

Why it matters (engine/passing_thread.py): a long-lived thread that has run parallel torch ops keeps
an OpenMP pool, and with more pool threads than cores every parallel region of the engine's loop
pays a wake-up (measured: a prefill on the engine thread 2x slower). So the engine loads its model,
allocates its KV cache and runs a request's encoders on passing threads, never on the caller's.
"""

from __future__ import annotations

import contextvars
import threading

import pytest
import torch

import engine.engine as engine_module
import engine.kv_cache as kv_cache_module
from engine.engine import EngineConfig, LLMEngine
from engine.passing_thread import in_passing_thread
from engine.sampling_params import SamplingParams

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_var", default="unset")


def test_returns_the_result_from_a_thread_that_has_ended():
    seen: list[threading.Thread] = []

    def work(a, b, *, c):
        seen.append(threading.current_thread())
        return a + b + c

    assert in_passing_thread(work, 1, 2, c=3) == 6
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()


def test_reraises_the_exception_of_the_work():
    def fail():
        raise KeyError("missing thing")

    with pytest.raises(KeyError, match="missing thing"):
        in_passing_thread(fail)


def test_sees_the_callers_context_variables_but_not_its_grad_mode():
    token = _VAR.set("caller's")
    try:
        with torch.inference_mode():
            seen = in_passing_thread(lambda: (_VAR.get(), torch.is_inference_mode_enabled()))
    finally:
        _VAR.reset(token)
    assert seen == ("caller's", False)  # grad mode is per thread: enter it inside the work


def test_engine_builds_its_model_and_cache_off_the_callers_thread(golden_copy, monkeypatch):
    threads: dict[str, threading.Thread] = {}
    load, allocate = engine_module.load_model, kv_cache_module.KVCacheSpec.allocate

    def recording_load(*args, **kwargs):
        threads["load"] = threading.current_thread()
        return load(*args, **kwargs)

    def recording_allocate(self, *args, **kwargs):
        threads["allocate"] = threading.current_thread()
        return allocate(self, *args, **kwargs)

    monkeypatch.setattr(engine_module, "load_model", recording_load)
    monkeypatch.setattr(kv_cache_module.KVCacheSpec, "allocate", recording_allocate)
    engine = LLMEngine(golden_copy, config=EngineConfig(num_kv_blocks=32))
    try:
        for what in ("load", "allocate"):
            assert threads[what] is not threading.current_thread(), what
            assert not threads[what].is_alive(), what
        engine.add_request([1, 2, 3], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
        outs = [out for _ in range(3) for out in engine.step() if out.finished]
        assert len(outs[0].token_ids) == 2  # the model built elsewhere serves as usual
    finally:
        engine.shutdown()
