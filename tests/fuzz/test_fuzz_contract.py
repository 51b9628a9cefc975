"""The gRPC contract under fuzzing (issue #20), the short run: 300 generated requests over every request
message of proto/ (raw bytes, raw HTTP/2 frames and over-size messages included) and 100 generated
media files, good and broken, drawn derandomized (the same cases every run), against a real stack: the
session's Redis, a `bailing gateway` and `bailing worker` subprocesses for the demo Ling and Ming 2.0
checkpoints (tests/fuzz/stack.py).

Every call ends with a documented status and a one-line message (tests/fuzz/runner.py `problem`),
the same worker processes serve afterwards under the same ids, and an ordinary request to each model
is answered. `make fuzz` (bench/fuzz.py) is the long run: 10,000 requests and 2,000 media files.
"""

from __future__ import annotations

import pytest

from gateway.config import GatewayConfig
from tests.fuzz.cases import draw_mix, media_mix, request_mix
from tests.fuzz.runner import Runner, Tally
from tests.fuzz.stack import FuzzStack, ModelSpec

pytestmark = pytest.mark.slow
REQUESTS, MEDIA = 300, 100
MAX_MESSAGE_BYTES = GatewayConfig.__dataclass_fields__["max_message_bytes"].default


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory, demo_ling, demo_ming2):
    specs = (ModelSpec("fuzz-ling", demo_ling, "ling"), ModelSpec("fuzz-ming2", demo_ming2, "ming"))
    stack = FuzzStack(redis_url, tmp_path_factory.mktemp("fuzz-logs"), specs).start()
    yield stack
    stack.close()


def test_generated_requests_and_media_get_documented_statuses_and_the_workers_keep_serving(stack):
    target, before = stack.target(), stack.liveness()
    assert target.media == target.image == target.speech == ("fuzz-ming2",)
    runner = Runner(stack.address)
    requests, media = Tally(), Tally()
    try:
        runs = [
            (request_mix(target, MAX_MESSAGE_BYTES), REQUESTS, requests),
            (media_mix(target), MEDIA, media),
        ]
        for mix, n, tally in runs:
            cases = draw_mix(mix, n)
            for case, outcome in zip(cases, runner.run_all(cases), strict=True):
                tally.add(case, outcome)
    finally:
        runner.close()
    assert (requests.total, media.total) == (REQUESTS, MEDIA)
    assert not requests.problems, requests.report_problems()
    assert not media.problems, media.report_problems()
    assert sum(c["OK"] for c in requests.counts.values()) > 0, requests.markdown("request")
    assert before.differences(stack.liveness()) == []
    assert stack.ordinary_requests() == {"fuzz-ling": "", "fuzz-ming2": ""}
