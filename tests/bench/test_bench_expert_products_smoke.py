"""bench/expert_products.py: every form computes the same product and the table reports each."""

from __future__ import annotations

import torch

from bench.expert_products import EXPERTS, FORMS, HIDDEN, markdown_table, measure


def test_every_form_is_timed_and_tabled():
    torch.manual_seed(0)
    weights = [torch.randn(EXPERTS, HIDDEN, HIDDEN) / 20]
    ms = measure(4, weights, repeats=1)  # asserts the packed and column forms equal F.linear
    assert set(ms) == set(FORMS) and all(v > 0 for v in ms.values())
    result = {"layers": 1, "weight_bytes": weights[0].numel() * 4, "rows": {4: ms}}
    table = markdown_table(result, {"cpu": "test", "threads": 2, "torch": "x"})
    assert "| 4 |" in table and f"{ms['padded_bmm']:.1f}" in table and "1 layers" in table
