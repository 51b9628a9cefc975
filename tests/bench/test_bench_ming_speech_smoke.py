"""bench/ming_speech.py's --quick sizes: the plain loop and the whole service (Valkey, worker and gateway
processes) both run every case, the audio seconds agree between them, the result is plain JSON and the
table names every case and both targets. (The real run takes minutes.)"""

from __future__ import annotations

import json

import pytest

from bailing.demo.ming2 import write_ming2_checkpoint
from bench import ming_speech

pytestmark = pytest.mark.slow


def test_quick_mode_runs_every_case(tmp_path):
    checkpoint = write_ming2_checkpoint(tmp_path / "ming2", seed=4)
    result = json.loads(json.dumps(ming_speech.run_benchmark(ming_speech.QUICK, checkpoint)))
    cases = result["cases"]
    assert set(cases) == set(ming_speech.CASES)
    for case in cases.values():
        assert case["wall_s"] > 0 and case["audio_s"] > 0 and case["ttfa_s"] > 0
    assert cases["plain-serial-4"]["audio_s"] == pytest.approx(cases["service-concurrent-4"]["audio_s"])
    assert cases["plain-1"]["audio_s"] == pytest.approx(cases["service-1"]["audio_s"])
    assert all(r > 0 for r in result["ratios"].values())
    table = ming_speech.markdown_table(result, {"cpu": "x", "threads": 2})
    assert "| service-concurrent-4 | 4 |" in table and "(target <= 1.1)" in table and "(target >= 2)" in table
