"""BailingTalker2 against the official upstream run on the tiny golden checkpoint: prompt embeddings,
the prefill input, and every tensor of 3 AR steps x 10 Euler steps (fed the stored noise) for the
deterministic and the SDE case; the EPSS tables and the swayed times exactly; a seed reproduces
upstream's draws."""

from __future__ import annotations

import pytest
import torch

from models.ming.speech.cfm import FlowSampling, epss_timesteps, sway
from models.ming.speech.talker_generator import StepNoise, TalkerGenerator, TalkerRequest
from models.ming.speech.talker_loading import load_talker
from models.ming.speech.talker_prompt import embed_prompt, initial_history
from tests.models.ming.speech_golden import CASES, TALKER, available, expected, maxdiff, tensors

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
TOL = 1e-5
STEPS = 3


@pytest.fixture(scope="module")
def talker():
    return load_talker(TALKER, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def prompt_embs(talker):
    g = tensors()
    with torch.no_grad():
        spk = talker.speaker_embedding(g["inputs.xvector"])  # (1, H)
        lat = g["inputs.prompt_wav_lat"][0]  # (8, C)
        patches = talker.embed_patches(lat.reshape(-1, talker.config.patch_size, lat.shape[-1]))[:, 0]
    return spk, patches


def golden_prompt(case):
    from models.ming.speech.talker_prompt import TalkerPrompt

    e = expected()[case]
    return TalkerPrompt(tuple(e["input_ids"]), (e["spk_slot_index"],), tuple(e["prompt_patch_slots"]))


def test_prompt_embeddings(prompt_embs):
    spk, patches = prompt_embs
    g = tensors()
    assert maxdiff(spk, g["prompt.spk_emb"]) < TOL
    assert maxdiff(patches[None], g["prompt.prompt_wav_emb"]) < TOL


@pytest.mark.parametrize("case", CASES)
def test_inputs_embeds(talker, prompt_embs, case):
    g = tensors()
    prompt = golden_prompt(case)
    assert list(prompt.input_ids) == g[f"{case}.input_ids"][0].tolist()
    with torch.no_grad():
        embeds = embed_prompt(talker, prompt, *prompt_embs)
    assert maxdiff(embeds[None], g[f"{case}.inputs_embeds"]) < TOL


def run_case(talker, prompt_embs, case, generator=None, inject=True):
    """3 AR steps of the golden case; yields (step index, TalkerStep)."""
    g, e = tensors(), expected()[case]
    with torch.no_grad():
        embeds = embed_prompt(talker, golden_prompt(case), *prompt_embs)
    history = initial_history(g["inputs.prompt_wav_lat"][0], 32, 64, torch.device("cpu"), torch.float32)
    sampling = FlowSampling(**e["sampler_args"])
    request = TalkerRequest(embeds, history, sampling, generator=generator)
    gen = TalkerGenerator(talker)
    batch = gen.start([request])
    for i in range(STEPS):
        pre = f"{case}.step{i}."
        noise = StepNoise(g[pre + "y0"], g[pre + "sde_rnd"]) if inject else None
        yield i, gen.step(batch, noise=noise, trace=True)


@pytest.mark.parametrize("case", CASES)
def test_ar_steps_match_upstream(talker, prompt_embs, case):
    g = tensors()
    for i, step in run_case(talker, prompt_embs, case):
        pre = f"{case}.step{i}."
        trace = step.trace
        got = {
            "last_hidden_state": step.last_hidden_state,
            "h": step.h,
            "his_lat_in": step.history_in,
            "his_lat_out": step.history_out,
            "ode_x": torch.stack([s.x for s in trace]),
            "ode_dit_out": torch.stack([s.dit_out for s in trace]),
            "ode_v": torch.stack([s.v for s in trace]),
            "gen_lat": step.latents,
            "agg_out": step.next_embeds,
            "stop_logits": step.stop_logits,
            "stop_probs": step.stop_probs,
        }
        if i > 0:
            got["llm_inputs_embeds"] = g[f"{case}.step{i - 1}.agg_out"]  # what the step was fed
        for name, value in got.items():
            ref = g[pre + name]
            assert value.shape == ref.shape, pre + name
            assert maxdiff(value, ref) < TOL, (pre + name, maxdiff(value, ref))
        ode_t = torch.stack([s.t for s in trace])
        assert torch.equal(ode_t, g[pre + "ode_t"]), pre + "ode_t"
        assert step.finished == (False,)  # the stop rule never fires before step 11
    assert expected()[case]["stop_probs"][1][1] > 0.5  # ... even though step 1's p_stop exceeds 0.5


@pytest.mark.parametrize("case", CASES)
def test_seed_reproduces_upstream_draws(talker, prompt_embs, case):
    """upstream drew with torch.manual_seed(1234) just before the call: a Generator seeded 1234 gives
    the same y0 / sde_rnd per step, hence the same patches."""
    g = tensors()
    generator = torch.Generator().manual_seed(expected()[case]["seed"])
    for i, step in run_case(talker, prompt_embs, case, generator=generator, inject=False):
        pre = f"{case}.step{i}."
        assert torch.equal(step.noise.y0, g[pre + "y0"])
        assert torch.equal(step.noise.sde, g[pre + "sde_rnd"])
        assert maxdiff(step.latents, g[pre + "gen_lat"]) < TOL


def test_epss_tables_exact():
    for n, table in expected()["epss_tables"].items():
        assert epss_timesteps(int(n)).tolist() == table, n
    assert torch.equal(epss_timesteps(5), tensors()["tables.epss_timesteps_5"])


@pytest.mark.parametrize("case", CASES)
def test_timesteps_after_sway_exact(talker, case):
    e = expected()[case]
    assert epss_timesteps(10).tolist() == e["t_epss"]
    assert sway(epss_timesteps(10)).tolist() == e["t_after_sway"]
    assert talker.cfm.timesteps(torch.device("cpu"), torch.float32).tolist() == e["t_after_sway"]
