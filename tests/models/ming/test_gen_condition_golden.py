"""Ming image generation, thinker side, against the official 2.0 code (golden ming-gen-tiny): query-token
insertion (ids, masks, grids, query rows), the condition path (every stored intermediate within 1e-5),
the bidirectional connector against transformers' Qwen2 with causal masking off, size snapping."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from models.ming.generation.generator import ImageGenerator
from models.ming.generation.queries import (
    QueryTokens,
    append_queries,
    insert_queries,
    query_grids,
    select_queries,
)
from models.ming.generation.sizes import TIERS, process_ratio, snap_size
from tests.models.ming.gen_golden import GEN_GOLDEN, available, expected, maxdiff, tensors

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
TOL = 1e-5


@pytest.fixture(scope="module")
def gen() -> ImageGenerator:
    return ImageGenerator.load(GEN_GOLDEN, "cpu", torch.float32)


@pytest.mark.parametrize("which", ["scales_tiny", "scales_default"])
def test_query_insertion_equals_upstream(which):
    case = expected()["case1_query_insertion"]
    tokens = QueryTokens(case["image_patch_token"], case["start_token_id"], case["end_token_id"])
    want = case[which]
    ids, mask, gen_mask = insert_queries(case["input_ids"], case["attention_mask"], want["scales"], tokens)
    assert ids == want["input_ids"]
    assert mask == want["attention_mask"]
    assert gen_mask == want["gen_mask"]


def test_query_grids_and_rows_equal_upstream(gen):
    case = expected()["case1_query_insertion"]
    scales = gen.config.scales
    assert list(scales) == case["scales_tiny"]["scales"]
    # upstream lists one [1, 2, 2 s²] per scale for each batch row (2 rows)
    assert query_grids(scales) * 2 == case["scales_tiny"]["appand_learnable_tokens_image_grid_thw"]
    rows = gen.heads.queries()  # (Σ s², H), one row's query embeddings
    assert maxdiff(torch.cat([rows, rows]), tensors()["case1.query_embeds"]) == 0.0


def test_append_queries_marks_the_last_scale():
    tokens = QueryTokens.from_patch_token(157157)
    prompt = append_queries([5, 6, 7], [2, 4], tokens)
    assert prompt.ids[:3] == [5, 6, 7] and len(prompt.ids) == 3 + (2 + 4) + (2 + 16)
    assert prompt.num_queries == 20
    assert prompt.positions == list(range(3 + 6 + 1, 3 + 6 + 1 + 16))
    assert all(prompt.ids[p] == 157157 for p in prompt.positions)


def test_condition_path_intermediates(gen):
    t = tensors()
    queries = select_queries(t["case2.llm_hidden_states"], t["case2.gen_mask"], gen.config.scales)
    assert maxdiff(queries, t["case2.selected_queries"]) == 0.0
    with torch.inference_mode():
        x = gen.heads.proj_in(queries)
        assert maxdiff(x, t["case2.proj_in_out"]) < TOL
        y = gen.connector(x)
        assert maxdiff(y, t["case2.connector_hidden_states_last"]) < TOL
        z = gen.heads.proj_out(y)
        assert maxdiff(z, t["case2.proj_out_out"]) < TOL
    condition = gen.condition(queries)
    assert maxdiff(condition, t["case2.condition"]) < TOL
    assert maxdiff(condition, F.normalize(z, dim=-1)) < 1e-7
    with torch.inference_mode():
        assert maxdiff(gen.heads.caption(t["case2.condition"]), t["case2.mlp_out"]) < TOL


def test_text_encoder_norm_variant(gen):
    heads = gen.heads
    saved = heads.config
    heads.config = dataclasses.replace(saved, text_encoder_norm=True)
    try:
        with torch.inference_mode():
            out = heads.caption(tensors()["case2.condition"])
    finally:
        heads.config = saved
    assert maxdiff(out, tensors()["case2.mlp_out_text_encoder_norm"]) < 1e-4  # inputs scaled x1000


def test_connector_equals_transformers_qwen2_without_causal_mask(gen):
    hf = AutoModelForCausalLM.from_pretrained(GEN_GOLDEN / "connector", dtype=torch.float32).eval()
    for layer in hf.model.layers:
        layer.self_attn.is_causal = False
    x = torch.randn(3, 16, hf.config.hidden_size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want = hf(inputs_embeds=x, attention_mask=torch.zeros(3, 1, 16, 16), output_hidden_states=True)
        ours = gen.connector(x)
    assert maxdiff(ours, want.hidden_states[-1]) < TOL


def test_connector_is_bidirectional(gen):
    x = torch.randn(1, 16, gen.connector.hf_config.hidden_size, generator=torch.Generator().manual_seed(6))
    changed = x.clone()
    changed[0, -1] += 1.0
    with torch.inference_mode():
        a, b = gen.connector(x), gen.connector(changed)
    assert maxdiff(a[0, 0], b[0, 0]) > 1e-4  # the first output sees the last input
    assert expected()["case2_notes"]["first_token_changes_when_last_query_changes"]


def test_process_ratio_equals_upstream():
    for row in expected()["process_ratio"]:
        closest, resize = process_ratio(row["ori_h"], row["ori_w"], row["highres"])
        assert closest == row["closest_size"], row
        assert resize == row["resize_size"], row


def test_every_bucket_fits_the_latent_grid():
    for table in TIERS.values():
        for h, w in table.values():
            assert h % 32 == 0 and w % 32 == 0


@pytest.mark.parametrize(
    ("request_hw", "default", "reference", "want"),
    [
        (None, 1024, None, (1024, 1024, 1024)),  # the variant's default square
        (None, 512, None, (512, 512, 512)),
        ((512, 512), 1024, None, (512, 512, 512)),  # tier from the requested area
        ((1080, 1920), 1024, None, (768, 1344, 1024)),
        ((600, 400), 1024, None, (608, 416, 512)),
        (None, 1024, (300, 600), (704, 1408, 1024)),  # an edit: the reference's ratio, default tier
        ((512, 512), 1024, (300, 600), (352, 704, 512)),  # an edit with a requested size: its tier
    ],
)
def test_snap_size(request_hw, default, reference, want):
    h, w = request_hw if request_hw else (None, None)
    snapped = snap_size(h, w, default, reference)
    assert (snapped.height, snapped.width, snapped.tier) == want


@pytest.mark.parametrize(
    ("h", "w", "message"),
    [(512, None, "together"), (0, 512, "positive"), (-5, 512, "positive"), (100, 1000, "aspect ratio")],
)
def test_snap_size_refuses(h, w, message):
    with pytest.raises(ValueError, match=message):
        snap_size(h, w, 1024)
