"""The glyph branch end to end on the golden ming-gen-tiny checkpoint with a tiny byt5/ added: the plan
takes the quoted text from the prompt, a quoted prompt's caption gains byt5_max_length tokens, its
negative side is zeros of that shape, generation runs and the text changes the image; a prompt without
quotes gives exactly today's bytes; glyph requests share DiT forwards and stay batch invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ming.family import MING
from models.ming.generation.denoise import groups, run_to_end
from models.ming.generation.generator import ImageGenerator
from models.ming.generation.glyph import extract_glyph_text
from pipelines.image_generation import ImageLimits, plan
from pipelines.media import MediaPipeline
from pipelines.protocol import ChatMessage, GenerateJob, ImageOptions, Part
from tests.models.ming.gen_glyph_tiny import MAX_LENGTH, golden_with_byt5, write_tiny_byt5
from tests.models.ming.gen_golden import GEN_GOLDEN, HEIGHT, WIDTH, available, tensors
from tests.models.ming.gen_sd3_tiny import write_tiny_sd3
from tests.models.ming.ming_golden import GOLDEN, TINY

pytestmark = pytest.mark.skipif(not available(), reason="Ming generation golden data missing")
SETTINGS = {"height": HEIGHT, "width": WIDTH, "steps": 3, "guidance": 2.0}
Q, CAPTION = 16, 32  # last-scale queries, the golden DiT caption width
QUOTED = 'A bakery poster with the title "Fresh Bread"'
PLAIN = "A bakery poster with fresh bread"


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> ImageGenerator:
    return ImageGenerator.load(
        golden_with_byt5(tmp_path_factory.mktemp("glyph") / "ckpt"), "cpu", torch.float32
    )


@pytest.fixture(scope="module")
def today() -> ImageGenerator:
    return ImageGenerator.load(GEN_GOLDEN, "cpu", torch.float32)


def request(gen, prompt: str, seed: int = 100, negative: torch.Tensor | None = None, **changes):
    """What an image request does after the thinker: condition -> glyph tokens -> a denoising job."""
    condition = gen.condition(tensors()["case2.selected_queries"][0])  # the thinker's states stand-in
    condition, negative = gen.add_glyph(condition, negative, extract_glyph_text(prompt))
    return gen.new_job(condition, seeds=[seed], negative=negative, **(SETTINGS | changes))


def test_a_quoted_prompt_gets_glyph_caption_tokens_and_a_zero_negative(gen):
    job, plain = request(gen, QUOTED), request(gen, PLAIN)
    assert job.context.shape == (Q + MAX_LENGTH, CAPTION) and plain.context.shape == (Q, CAPTION)
    assert torch.equal(job.context[:Q], plain.context)  # the condition's own tokens are untouched
    zeros = gen.heads.caption(torch.zeros(Q + MAX_LENGTH, 40))  # upstream: MLP(condition * 0)
    assert torch.equal(job.uncond, zeros)


def test_a_negative_prompt_gains_zero_glyph_rows(gen):
    negative = gen.condition(tensors()["case2.selected_queries"][1])
    condition = gen.condition(tensors()["case2.selected_queries"][0])
    _, padded = gen.add_glyph(condition, negative, extract_glyph_text(QUOTED))
    assert torch.equal(padded[:Q], negative) and not padded[Q:].any()
    job = request(gen, QUOTED, negative=negative)
    assert job.uncond.shape == job.context.shape


def test_generation_runs_and_the_text_changes_the_image(gen):
    job, plain = request(gen, QUOTED), request(gen, PLAIN)
    run_to_end(gen.variant, [job, plain])
    pixels = gen.decode(job)
    assert pixels.shape == (1, HEIGHT, WIDTH, 3) and pixels.dtype == np.uint8
    assert not torch.equal(job.latents, plain.latents)


def test_a_prompt_without_quotes_is_exactly_todays_result(gen, today):
    with_byt5, without = request(gen, PLAIN), request(today, PLAIN)
    run_to_end(gen.variant, [with_byt5])
    run_to_end(today.variant, [without])
    assert torch.equal(with_byt5.latents, without.latents)
    assert np.array_equal(gen.decode(with_byt5), today.decode(without))


def test_glyph_requests_share_forwards_and_each_equals_its_solo_run(gen):
    asks = [(QUOTED, 100), ("A sign that says 'OPEN'", 101), (PLAIN, 102)]
    jobs = [request(gen, prompt, seed) for prompt, seed in asks]
    assert len(groups(gen.variant, jobs)) == 2  # the two glyph requests together, the plain one alone
    run_to_end(gen.variant, jobs)
    for job, (prompt, seed) in zip(jobs, asks, strict=True):
        solo = request(gen, prompt, seed)
        run_to_end(gen.variant, [solo])
        assert torch.equal(job.latents, solo.latents)


@pytest.mark.skipif(not (GOLDEN / "expected.json").is_file(), reason="Ming golden data missing")
def test_the_plan_takes_the_glyph_text_from_the_prompt(gen, today):
    media = MediaPipeline(MING, TINY, lambda ref: None)
    job = GenerateJob("r1", "ming", messages=(ChatMessage("user", (Part("text", text=QUOTED),)),),
                      task="image", image=ImageOptions(seed=1, width=WIDTH, height=HEIGHT))  # fmt: skip
    assert plan(job, media, gen, ImageLimits()).glyph_text == 'Text "Fresh Bread". '
    assert plan(job, media, today, ImageLimits()).glyph_text == ""  # no byt5/: nothing to extract for


def test_the_preview_variant_takes_glyph_tokens_too(tmp_path):
    """Upstream loads byt5/ whatever the DiT (Preview's load_image_gen_modules does too)."""
    root = write_tiny_sd3(tmp_path / "sd3")
    write_tiny_byt5(root / "byt5")
    gen = ImageGenerator.load(root, "cpu", torch.float32)
    negative = gen.condition(tensors()["case2.selected_queries"][1])
    job = request(gen, QUOTED, negative=negative, guidance=5.0)
    assert job.context.shape[0] == job.uncond.shape[0] == Q + MAX_LENGTH
    run_to_end(gen.variant, [job])
    assert torch.isfinite(job.latents).all()
