"""bench/ming.py's --quick sizes end to end on the tiny demo Ming thinker: every scenario reports positive
numbers, the mixed batch decodes the same tokens as one request at a time, the result is plain JSON and
the tables name every row. (The real run, on the bench-size model, takes minutes.)"""

from __future__ import annotations

import json

import pytest

from bailing.demo.ming import MingDemoSpec
from bench import ming

pytestmark = pytest.mark.slow


def test_quick_mode_runs_every_scenario_on_a_tiny_model(tmp_path):
    result = json.loads(json.dumps(ming.run(ming.QUICK, root=tmp_path, spec=MingDemoSpec())))
    media = {r["input"]: r for r in result["media"]}
    assert list(media) == ["text only", "image 56x56 JPEG", "image 112x112 JPEG", "audio 1 s WAV",
                           "audio 2 s WAV", "video 2 s 2 fps 56x56 MP4"]  # fmt: skip
    assert media["text only"]["encoder_ms"] is None
    for name, row in media.items():
        keys = ["prompt_tokens", "processor_ms", "ttft_ms", "decode_ms_per_token"]
        keys += [] if name == "text only" else ["encoder_ms"]
        assert all(row[k] > 0 for k in keys), row
    assert media["image 112x112 JPEG"]["prompt_tokens"] > media["image 56x56 JPEG"]["prompt_tokens"]

    burst = result["burst"]
    assert [r["side"] for r in burst["runs"]] == ["ours", "baseline"] * ming.QUICK.rounds
    for row in burst["runs"] + burst["ours_over_baseline"]:
        assert all(row[k] > 0 for k in ming.RATIO_KEYS), row

    mixed = result["mixed"]
    assert mixed["same_tokens"] is True
    for way in ("together", "one_by_one"):
        assert mixed[way]["generated_tokens"] == 2 * ming.QUICK.mixed * ming.QUICK.mixed_tokens
        assert mixed[way]["tokens_per_s"] > 0 and mixed[way]["wall_s"] > 0
    assert mixed["speedup"] > 0

    table = ming.markdown_table(result, {"cpu": "x", "cores": 2, "threads": 2, "torch": "t"})
    assert "| image 112x112 JPEG |" in table and "| 1 | ours / baseline |" in table
    assert "| all at once |" in table and "| yes |" in table
