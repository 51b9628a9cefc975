"""The 2.0 demo thinker served by LLMEngine end to end: processor -> add_request(media=...) ->
greedy tokens. An image prompt, a timed-video prompt and a text prompt each give tokens, the same
on a second engine, and the same when they share their steps (batched) as when run alone; a
chunked prefill through the image block changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bailing.demo.ming2 import write_ming2_checkpoint
from engine.engine import EngineConfig, LLMEngine
from engine.multimodal import MediaInputs
from engine.sampling_params import SamplingParams
from models.ming.processing import MingProcessor
from tests.models.ming.processing_media import mp4_bytes, png_bytes, ramp_video


@pytest.fixture(scope="module")
def demo2(tmp_path_factory):
    return write_ming2_checkpoint(tmp_path_factory.mktemp("ming2e") / "ming2", seed=7)


@pytest.fixture(scope="module")
def requests(demo2) -> dict[str, tuple[list[int], MediaInputs | None]]:
    processor = MingProcessor.from_pretrained(
        demo2, video={"min_pixels": 64 * 64, "total_pixels": 8 * 64 * 64}
    )
    pixels = ((np.indices((120, 200, 3)).sum(0) * 37 + np.arange(3) * 85) % 256).astype(np.uint8)

    def chat(kind: str | None, text: str, **media) -> tuple[list[int], MediaInputs | None]:
        content = ([{"type": kind}] if kind else []) + [{"type": "text", "text": text}]
        inputs = processor.process([{"role": "user", "content": content}], **media)
        found = inputs.media()
        return inputs.input_ids[0].tolist(), (MediaInputs(found) if found else None)

    return {
        "image": chat("image", "What is in the picture?", images=[png_bytes(pixels)]),
        "video": chat("video", "What happens?", videos=[mp4_bytes(ramp_video(10), 4)]),
        "text": chat(None, "Tell me a story."),
    }


def make_engine(folder, **config) -> LLMEngine:
    base = {"max_num_seqs": 8, "num_kv_blocks": 64, "block_size": 16}
    return LLMEngine(folder, "cpu", torch.float32, EngineConfig(**(base | config)))


def run(engine: LLMEngine, reqs: list[tuple[list[int], MediaInputs | None]]) -> list[list[int]]:
    """All requests enter the same first step; step to the end; tokens per request, in order."""
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    with engine.holding_steps():
        rids = [
            engine.add_request(ids, params, request_id=f"r{i}", media=m) for i, (ids, m) in enumerate(reqs)
        ]
    final = {}
    while len(final) < len(rids):
        final.update({o.request_id: o for o in engine.step() if o.finished})
    return [final[r].token_ids for r in rids]


def test_image_video_and_text_prompts_give_tokens_alone_and_batched(demo2, requests):
    order = ["image", "video", "text"]
    alone = {k: run(make_engine(demo2), [requests[k]])[0] for k in order}
    assert all(len(tokens) == 8 for tokens in alone.values())
    assert alone["image"] != alone["text"]  # the image block reaches the logits
    again = {k: run(make_engine(demo2), [requests[k]])[0] for k in order}
    assert again == alone  # greedy and deterministic
    together = run(make_engine(demo2), [requests[k] for k in order])
    assert dict(zip(order, together, strict=True)) == alone


def test_a_chunked_prefill_through_the_image_block(demo2, requests):
    whole = run(make_engine(demo2), [requests["image"]])[0]
    assert run(make_engine(demo2, max_num_batched_tokens=7), [requests["image"]])[0] == whole
