"""The AudioVAE decoder against the golden set (upstream `AudioVAE.decode` via `BailingTalker2.token2wav`
on the tiny checkpoint): the whole decode's intermediates and waveform, and every streamed schedule's
chunk lengths (exact) and values, for the random latents, the talker's own latents and the
sliding-window decoder."""

from __future__ import annotations

import pytest
import torch

from models.ming.speech.vae import AudioVAE
from tests.models.ming.speech_golden import SCHEDULES, VAE, VAE_SLIDING, available, expected, maxdiff, tensors

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
CPU = torch.device("cpu")
TOL = 1e-6
# prefix -> (folder, latents key, expected.json section)
CASES = {
    "vae.": (VAE, "vae.latent", "vae"),
    "vae_talker.": (VAE, "gen_det.latents", "vae_talker_latents"),
    "vae_sw.": (VAE_SLIDING, "vae.latent", "vae_sw"),
}


@pytest.fixture(scope="module")
def vaes():
    return {
        VAE: AudioVAE.load(VAE, CPU, torch.float32),
        VAE_SLIDING: AudioVAE.load(VAE_SLIDING, CPU, torch.float32),
    }


def test_whole_decode_intermediates(vaes):
    g = tensors()
    dec = vaes[VAE].decoder
    with torch.inference_mode():
        x = dec.fc1(g["vae.latent"])
        assert maxdiff(x, g["vae.dec_fc1"]) <= TOL
        x = dec.upsample_whole(x)
        assert x.shape == (1, 48, 64) and maxdiff(x, g["vae.dec_upsampled"]) <= TOL
        h = dec.backbone_whole(x)
        assert maxdiff(h, g["vae.dec_backbone_out"]) <= TOL
        assert maxdiff(dec.head.out(h), g["vae.head_out"]) <= TOL


@pytest.mark.parametrize("prefix", list(CASES))
def test_whole_decode_waveform(vaes, prefix):
    folder, latents, section = CASES[prefix]
    g = tensors()
    wav = vaes[folder].decode_whole(g[latents])
    assert wav.shape == (1, expected()[section]["wav_full_len"]) == g[prefix + "wav_full"].shape
    assert maxdiff(wav, g[prefix + "wav_full"]) <= TOL


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prefix", list(CASES))
def test_streamed_decode(vaes, prefix, schedule):
    folder, latents, section = CASES[prefix]
    g, info = tensors(), expected()[section][schedule]
    stream, pos, chunks = vaes[folder].start_stream(), 0, []
    frames = info["chunk_latent_frames"]
    for i, n in enumerate(frames):
        chunk = stream.push(g[latents][:, pos : pos + n], last=i == len(frames) - 1)
        pos += n
        ref = g[f"{prefix}{schedule}.chunk{i}"]
        assert chunk.shape[-1] == info["chunk_out_lens"][i] == ref.shape[-1], (i, chunk.shape)
        if ref.numel():
            assert maxdiff(chunk, ref) <= TOL, i
        chunks.append(chunk)
    assert stream.finished
    wav = torch.cat(chunks, dim=-1)
    assert wav.shape[-1] == info["total_len"] and maxdiff(wav, g[f"{prefix}{schedule}.wav"]) <= TOL


def test_talker_latents_differ_from_random_ones():
    """Guards the case table: the talker case really decodes other latents."""
    g = tensors()
    assert maxdiff(g["vae_talker.wav_full"], g["vae.wav_full"]) > 1e-3
