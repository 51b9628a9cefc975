"""The talker's parts beyond the golden trace: the DiT's RoPE is interleaved pairs (rotate-half fails the
golden), the backbone is transformers' Qwen2Model whose cached steps equal one full forward, batched
requests equal the same requests alone, seeds reproduce, and the stop rule / step limits."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2Model

from models.ming.speech import dit_layers
from models.ming.speech.cfm import FlowSampling, epss_timesteps
from models.ming.speech.dit_layers import apply_rope, rope_inv_freq
from models.ming.speech.talker_generator import StepNoise, TalkerGenerator, TalkerRequest
from models.ming.speech.talker_loading import load_talker
from models.ming.speech.talker_prompt import initial_history
from tests.models.ming.speech_golden import TALKER, available, expected, maxdiff, tensors

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
CPU = torch.device("cpu")
TOL = 1e-5


@pytest.fixture(scope="module")
def talker():
    return load_talker(TALKER, CPU, torch.float32)


def golden_request(talker, length=None, **kwargs):
    g = tensors()
    embeds = g["gen_det.inputs_embeds"][0]
    embeds = embeds if length is None else embeds[:length]
    history = initial_history(g["inputs.prompt_wav_lat"][0], 32, 64, CPU, torch.float32)
    return TalkerRequest(embeds, history, **kwargs)


# --- RoPE --------------------------------------------------------------------------------------


def test_rope_rotates_adjacent_pairs():
    d, pos = 16, 3
    inv = rope_inv_freq(d)
    angles = torch.stack([pos * inv, pos * inv], -1).flatten()[None].repeat(pos + 1, 1)  # (L, d)
    x = torch.zeros(1, 1, pos + 1, d)
    x[..., 0] = 1.0  # unit vector on dim 0 at every position
    out = apply_rope(x, angles)[0, 0, pos]
    assert out[0] == pytest.approx(math.cos(pos * inv[0].item()), abs=1e-6)
    assert out[1] == pytest.approx(math.sin(pos * inv[0].item()), abs=1e-6)  # pair partner, not dim d/2
    assert out[d // 2] == 0.0 and out[2:].abs().max() == 0.0


def test_rotary_table_interleaves_frequencies(talker):
    angles = talker.cfm.model.rotary_embed(5)  # (L, d)
    inv = rope_inv_freq(16)
    assert torch.equal(angles[4, 0::2], 4 * inv) and torch.equal(angles[4, 1::2], 4 * inv)


def neox_rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def test_rotate_half_would_fail_the_golden(talker, monkeypatch):
    g, pre = tensors(), "gen_det.step0."
    h, his, y0 = g[pre + "h"], g[pre + "his_lat_in"], g[pre + "y0"]
    t = torch.tensor(expected()["gen_det"]["t_after_sway"][0])
    with torch.no_grad():
        ours = talker.cfm.model.forward_with_cfg(y0, t, h, his)
        assert maxdiff(ours, g[pre + "ode_dit_out"][0]) < TOL
        monkeypatch.setattr(dit_layers, "rotate_pairs", neox_rotate_half)
        monkeypatch.setattr(
            dit_layers.RotaryEmbedding,
            "forward",
            lambda self, n: torch.cat([torch.arange(n)[:, None] * self.inv_freq[None]] * 2, dim=-1),
        )
        neox = talker.cfm.model.forward_with_cfg(y0, t, h, his)
    assert maxdiff(neox, g[pre + "ode_dit_out"][0]) > 1e-3


# --- backbone -------------------------------------------------------------------------------------


def test_backbone_is_transformers_qwen2(talker):
    assert type(talker.model) is Qwen2Model
    assert talker.model.config._attn_implementation == "sdpa"


def test_cached_steps_equal_one_full_forward(talker):
    gen = TalkerGenerator(talker)
    batch = gen.start([golden_request(talker, sampling=FlowSampling(temperature=1.0))])
    steps = [gen.step(batch) for _ in range(4)]
    fed = torch.cat([tensors()["gen_det.inputs_embeds"]] + [s.next_embeds for s in steps[:-1]], dim=1)
    with torch.no_grad():
        full = talker.model(inputs_embeds=fed).last_hidden_state  # (1, L + 3, H)
    stepwise = torch.cat([steps[0].last_hidden_state] + [s.last_hidden_state for s in steps[1:]], dim=1)
    assert stepwise.shape == full.shape
    assert maxdiff(stepwise, full) < TOL


def test_batched_requests_equal_alone(talker):
    """Different prompt lengths (left padding), seeds and step limits: a row that finishes leaves the
    batch (and its KV rows) while the others go on."""
    specs = [
        dict(length=None, seed=1, max_steps=4),
        dict(length=131, seed=2, max_steps=2),
        dict(length=150, seed=3, max_steps=3),
    ]

    def requests():
        return [
            golden_request(
                talker,
                s["length"],
                generator=torch.Generator().manual_seed(s["seed"]),
                sampling=FlowSampling(temperature=0.5),
                max_steps=s["max_steps"],
            )
            for s in specs
        ]

    gen = TalkerGenerator(talker)
    together = gen.generate(requests())
    alone = [gen.generate([r])[0] for r in requests()]
    for s, a, b in zip(specs, together, alone, strict=True):
        assert a.shape == b.shape == (4 * s["max_steps"], 64)
        assert maxdiff(a, b) < TOL


# --- sampling and stopping -----------------------------------------------------------------------


def seeded(talker, seed):
    request = golden_request(
        talker,
        generator=torch.Generator().manual_seed(seed),
        sampling=FlowSampling(temperature=1.0),
        max_steps=3,
    )
    return TalkerGenerator(talker).generate([request])[0]


def test_same_seed_same_latents(talker):
    a, b, c = seeded(talker, 7), seeded(talker, 7), seeded(talker, 8)
    assert torch.equal(a, b)
    assert maxdiff(a, c) > 1e-3


def test_injected_noise_shapes(talker):
    gen = TalkerGenerator(talker)
    batch = gen.start([golden_request(talker)])
    noise = gen.draw_noise(batch)
    assert noise.y0.shape == (1, 4, 64) and noise.sde.shape == (10, 1, 4, 64)
    with pytest.raises(ValueError, match="noise must be"):
        gen.step(batch, noise=StepNoise(noise.y0, noise.sde[:5]))
    step = gen.step(
        batch, noise=StepNoise(noise.y0, torch.zeros_like(noise.sde))
    )  # the refused call left no trace
    assert step.latents.shape == (1, 4, 64) and step.next_embeds.shape == (1, 1, 64)
    assert step.last_hidden_state.shape == (1, 160, 64) and batch.cache.get_seq_length() == 160


def forced_stop(p_stop: float):
    talker = load_talker(TALKER, CPU, torch.float32)
    big = 50.0 if p_stop > 0.5 else -50.0
    talker.stop_head.weight.zero_()
    talker.stop_head.bias.copy_(torch.tensor([-big, big]))
    return talker


def test_stop_rule_waits_for_min_new_tokens():
    gen = TalkerGenerator(forced_stop(1.0))
    batch = gen.start([golden_request(gen.talker, min_new_tokens=2, max_steps=50)])
    finished = []
    while not batch.done:
        finished.append(gen.step(batch).finished[0])
    assert finished == [False, False, False, True]  # stops at step 3 (> 2); that patch is kept
    assert len(batch.latents[0]) == 4 and batch.stop_reasons == ["stop"]


def test_step_limits():
    gen = TalkerGenerator(forced_stop(0.0))
    out = gen.generate([golden_request(gen.talker, min_new_tokens=0, max_steps=5)])
    assert out[0].shape == (20, 64)
    small = TalkerGenerator(gen.talker, max_cache_len=163)  # 160 prompt tokens: 3 steps fit
    batch = small.start([golden_request(gen.talker, max_steps=50)])
    while not batch.done:
        small.step(batch)
    assert len(batch.latents[0]) == 3 and batch.stop_reasons == ["length"]


def test_sampler_settings_are_validated():
    for bad in (dict(temperature=-1.0), dict(sigma=-0.1), dict(cfg=float("nan")), dict(cfg=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FlowSampling(**bad)
    assert epss_timesteps(4).tolist() == torch.linspace(0, 1, 5).tolist()  # no table: linspace
