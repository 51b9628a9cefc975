"""The handoff payload between a thinker worker and a diffusion-stage worker: the JSON payload and
the safetensors bytes of the condition tensors round-trip exactly."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.image_generation import ImageSettings
from workers.image_handoff import ImageHandoff, pack, settings_dict, unpack


def test_payload_round_trips_through_json():
    settings = ImageSettings(512, 768, 8, 2.0, 1.0, 41, 2, "webp", 90, (700, 480))
    h = ImageHandoff("r1", "ming", "bailing:handoff:r1", settings_dict(settings), 3, 57, False, 1.5e9)
    back = ImageHandoff.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.image_settings() == settings and back.image_settings().seeds == [41, 42]
    assert (back.request_id, back.first_seq, back.prompt_tokens, back.progress) == ("r1", 3, 57, False)


def test_tensors_round_trip_bit_for_bit():
    cond = torch.randn(16, 40)
    ref = torch.rand(3, 64, 96) * 2 - 1
    got = unpack(pack({"condition": cond, "negative": None, "reference": ref}))
    assert torch.equal(got["condition"], cond) and torch.equal(got["reference"], ref)
    assert got["negative"] is None


def test_a_handoff_without_a_condition_is_refused():
    with pytest.raises(ValueError, match="expected condition"):
        unpack(pack({"negative": torch.zeros(2, 2)}))
