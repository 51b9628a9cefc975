"""The thinker side of image generation on the shared engine: a prompt + learnable query blocks (3-row
positions of grids [1, 2, 2 s²], image gate) is one prefill whose hidden states at the last scale's
queries equal a plain full forward of our Ming model, alone, batched with text requests, chunked,
and after an image (editing)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from engine.engine import EngineConfig, LLMEngine
from engine.multimodal import MediaInputs
from engine.sampling_params import SamplingParams
from models.ming.generation.queries import QueryTokens, append_queries, query_grids
from tests.models.ming.ming_golden import GOLDEN, IMAGE_PATCH, TINY, media

pytestmark = pytest.mark.skipif(not (GOLDEN / "expected.json").is_file(), reason="Ming golden data missing")
SCALES = (2, 4)
TEXT = [5, 17, 33, 60, 61, 62, 63, 64, 70, 71, 72]


def make_engine(**config) -> LLMEngine:
    base = {"max_num_seqs": 8, "num_kv_blocks": 64, "block_size": 16}
    return LLMEngine(TINY, "cpu", torch.float32, EngineConfig(**(base | config)))


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return make_engine()


def query_prompt(engine: LLMEngine, prompt: list[int], extra: dict | None = None):
    """(ids, media, last-scale positions) of `prompt` + query blocks with fixed random rows."""
    tokens = QueryTokens.from_patch_token(IMAGE_PATCH)
    q = append_queries(prompt, SCALES, tokens)
    rows = torch.randn(
        q.num_queries, engine.model.config.llm.hidden_size, generator=torch.Generator().manual_seed(3)
    )
    tensors = dict(extra or {})
    tensors["query_embeds"] = torch.nn.functional.normalize(rows, dim=-1)
    tensors["query_grid_thw"] = torch.tensor(query_grids(SCALES))
    return q.ids, MediaInputs(tensors), q.positions


@torch.inference_mode()
def full_forward(engine: LLMEngine, ids: list[int], mm: MediaInputs, positions: list[int]) -> torch.Tensor:
    prompt = engine.model.prepare_prompt(torch.tensor(ids), **dict(mm.tensors))
    hidden = engine.model(prompt.ids, **prompt.forward_args(0, len(ids)))
    return hidden[positions].clone()


def run(engine: LLMEngine, ids, mm, positions, text_requests: int = 0):
    """The hidden request (and greedy text requests next to it), stepped to the end."""
    rid = engine.add_request(ids, hidden_positions=positions, media=mm)
    for i in range(text_requests):
        engine.add_request(
            TEXT[: 4 + i], SamplingParams(temperature=0.0, max_tokens=4), request_id=f"t{rid}-{i}"
        )
    rows = None
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == rid and out.finished:
                rows = out.hidden_states
    return rows


def test_query_positions_are_image_tokens_with_query_rows(engine):
    ids, mm, positions = query_prompt(engine, TEXT)
    prompt = engine.model.prepare_prompt(torch.tensor(ids), **dict(mm.tensors))
    assert prompt.media_mask.sum() == sum(s * s for s in SCALES)
    assert all(prompt.gate[p] == 1 for p in positions)  # the image gate
    assert torch.equal(prompt.media_rows, mm.tensors["query_embeds"])
    # the last block's positions: one row of s² tokens after the 2x2 merge, t/h/w rows distinct
    assert prompt.positions.shape == (3, len(ids))


@pytest.mark.parametrize("text_requests", [0, 2])
def test_query_states_through_the_engine_equal_a_full_forward(engine, text_requests):
    ids, mm, positions = query_prompt(engine, TEXT)
    rows = run(engine, ids, mm, positions, text_requests)
    assert torch.allclose(rows, full_forward(engine, ids, mm, positions), atol=1e-5)


def test_chunked_prefill_gives_the_same_query_states():
    chunked = make_engine(max_num_batched_tokens=7)
    ids, mm, positions = query_prompt(chunked, TEXT)
    rows = run(chunked, ids, mm, positions, text_requests=1)
    assert torch.allclose(rows, full_forward(chunked, ids, mm, positions), atol=1e-5)


def test_queries_after_a_reference_image(engine):
    tensors = load_file(GOLDEN / "inputs.safetensors")
    prompt = tensors["image.input_ids"][0].tolist()
    ids, mm, positions = query_prompt(engine, prompt, media(tensors, "image"))
    rows = run(engine, ids, mm, positions, text_requests=1)
    assert torch.allclose(rows, full_forward(engine, ids, mm, positions), atol=1e-5)
