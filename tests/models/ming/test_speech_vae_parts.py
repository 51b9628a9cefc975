"""The AudioVAE decoder's parts, beyond the golden schedules: the ISTFT head against `torch.istft` and
whole vs streamed; the streaming upsample bit-equal to the whole one; the backbone is transformers'
Qwen2Model, and our cached chunked forward (positions, causal / sliding-window masks) equals a whole
forward; the streamed decode on other schedules, batches and without a patch upsample."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2Config, Qwen2Model

from models.ming.speech.istft import ISTFT, ISTFTHead
from models.ming.speech.vae import AudioVAE
from models.ming.speech.vae_config import AudioVAEConfig
from models.ming.speech.vae_upsample import StreamingUpsample, UpsampleStream, upsample_linear
from tests.models.ming.speech_golden import VAE, VAE_SLIDING, available

pytestmark = pytest.mark.skipif(not available(), reason="Ming speech golden data missing")
CPU = torch.device("cpu")


def random_spectrum(batch: int, n_fft: int, frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    bins = n_fft // 2 + 1
    return torch.complex(
        torch.randn(batch, bins, frames, generator=g), torch.randn(batch, bins, frames, generator=g)
    )


def stream_istft(istft: ISTFT, spec: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    state, pos, outs = istft.start(), 0, []
    for i, n in enumerate(sizes):
        outs.append(istft.stream(spec[..., pos : pos + n], state, last=i == len(sizes) - 1))
        pos += n
    return outs


# ---------------------------------------------------------------- ISTFT


@pytest.mark.parametrize(("n_fft", "hop"), [(128, 32), (64, 16), (1280, 320)])
def test_istft_interior_equals_torch_istft(n_fft, hop):
    """torch.istft(center=True) trims n_fft/2; "same" padding trims (n_fft-hop)/2: ours is hop/2 longer
    at both ends and equal in between."""
    istft, spec = ISTFT(n_fft, hop), random_spectrum(2, n_fft, 12, seed=n_fft)
    ours = istft(spec)
    ref = torch.istft(spec, n_fft, hop, n_fft, torch.hann_window(n_fft), center=True)
    offset = n_fft // 2 - istft.pad
    assert ours.shape == (2, 12 * hop) and ref.shape == (2, 11 * hop)
    assert torch.allclose(ours[:, offset:-offset], ref, atol=1e-6, rtol=0)


def test_torch_istft_cannot_do_same_padding():
    """Why the overlap-add is ours: center=False fails torch's NOLA check on hann's zero first sample."""
    with pytest.raises(RuntimeError, match="window overlap add"):
        torch.istft(random_spectrum(1, 128, 8, 0), 128, 32, 128, torch.hann_window(128), center=False)


def test_istft_same_padding_by_hand():
    """One frame's inverse FFT, windowed, overlap-added and normalised, written out."""
    n_fft, hop, frames = 16, 4, 5
    istft, spec = ISTFT(n_fft, hop), random_spectrum(1, n_fft, frames, seed=3)
    window = torch.hann_window(n_fft)
    total = (frames - 1) * hop + n_fft
    audio, envelope = torch.zeros(total), torch.zeros(total)
    for t in range(frames):
        audio[t * hop : t * hop + n_fft] += torch.fft.irfft(spec[0, :, t], n=n_fft) * window
        envelope[t * hop : t * hop + n_fft] += window**2
    pad = (n_fft - hop) // 2
    expected = audio[pad : total - pad] / envelope[pad : total - pad]
    assert torch.allclose(istft(spec)[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sizes", [[16, 16, 16], [5, 20, 23], [1] * 48, [1, 47], [48], [10, 38, 0]])
def test_istft_stream_equals_whole(sizes):
    istft, spec = ISTFT(128, 32), random_spectrum(2, 128, 48, seed=7)
    outs = stream_istft(istft, spec, sizes)
    whole = istft(spec)
    streamed = torch.cat(outs, dim=-1)
    assert streamed.shape == whole.shape
    assert torch.allclose(streamed, whole, atol=1e-6, rtol=0)


def test_istft_head_spectrum_is_clipped_exp_magnitude_and_phase():
    head = ISTFTHead(dim=8, n_fft=16, hop=4)
    torch.nn.init.normal_(head.out.weight, std=3.0)
    hidden = torch.randn(2, 5, 8)
    raw = head.out(hidden).transpose(1, 2)  # (B, 18, L)
    spec = head.spectrum(hidden)
    magnitude = raw[:, :9].exp().clip(max=100.0)
    assert (raw[:, :9] > 4.7).any()  # the clip is exercised
    assert torch.allclose(spec.abs(), magnitude, rtol=1e-5, atol=1e-6)
    assert torch.allclose(spec, magnitude * torch.exp(1j * raw[:, 9:]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- upsample


@pytest.mark.parametrize(
    "sizes", [[4, 4, 4], [8, 4], [4, 8], [1] * 12, [12], [3, 0, 5, 4], [5, 7, 0], [1, 11]]
)
def test_upsample_stream_is_bit_equal_to_whole(sizes):
    x = torch.randn(2, sum(sizes), 16, generator=torch.Generator().manual_seed(len(sizes)))
    up, state, pos, outs = StreamingUpsample(4), UpsampleStream(), 0, []
    for i, n in enumerate(sizes):
        outs.append(up.push(x[:, pos : pos + n], state, last=i == len(sizes) - 1))
        pos += n
    assert outs[0].shape[1] == (0 if len(sizes) > 1 else 4 * sizes[0])  # the first chunk is held back
    assert torch.equal(torch.cat(outs, dim=1), upsample_linear(x, 4))
    assert torch.equal(upsample_linear(x, 4), torch.nn.Upsample(scale_factor=4, mode="linear")(x.mT).mT)
    with pytest.raises(RuntimeError, match="last chunk"):
        up.push(x[:, :1], state, last=True)


# ---------------------------------------------------------------- backbone


@pytest.fixture(scope="module", params=[VAE, VAE_SLIDING], ids=["full", "sliding"])
def folder(request):
    return request.param


@pytest.fixture(scope="module")
def vae(folder):
    return AudioVAE.load(folder, CPU, torch.float32)


def test_backbone_is_transformers_qwen2(folder, vae):
    """Our decoder backbone against a stock Qwen2Model built from the raw config dict."""
    backbone = json.loads((folder / "config.json").read_text())["dec_kwargs"]["backbone"]
    stock = Qwen2Model(Qwen2Config(**backbone)).eval()
    stock.load_state_dict(vae.decoder.decoder.state_dict())
    x = torch.randn(2, 40, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = vae.decoder.backbone_whole(x)
        assert torch.allclose(ours, stock(inputs_embeds=x).last_hidden_state, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sizes", [[16, 16, 16], [5, 1, 20, 22], [1] * 48, [3, 45], [7, 41]])
def test_backbone_stream_equals_whole_forward(vae, sizes):
    """Chunks through our cached wrapper (the upstream sliding-window fill included) == one causal pass."""
    x = torch.randn(2, sum(sizes), 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        whole = vae.decoder.backbone_whole(x)
        state, pos, outs = vae.decoder.start_stream(), 0, []
        for n in sizes:
            outs.append(vae.decoder.backbone_stream(x[:, pos : pos + n], state.cache))
            pos += n
        assert state.cache.get_seq_length() == sum(sizes)
    assert torch.allclose(torch.cat(outs, dim=1), whole, atol=1e-5, rtol=0)


def test_sliding_window_fill_split():
    vae = AudioVAE.load(VAE_SLIDING, CPU, torch.float32)
    state = vae.decoder.start_stream()
    x = torch.zeros(1, 16, 64)
    assert [p.shape[1] for p in vae.decoder._window_fill(x, state.cache)] == [5, 11]  # window 6: 5 first
    assert [p.shape[1] for p in vae.decoder._window_fill(x[:, :5], state.cache)] == [5]  # never crosses


# ---------------------------------------------------------------- whole decoder, streamed


def streamed(vae: AudioVAE, latents: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    stream, pos, outs = vae.start_stream(), 0, []
    for i, n in enumerate(sizes):
        outs.append(stream.push(latents[:, pos : pos + n], last=i == len(sizes) - 1))
        pos += n
    return outs


@pytest.mark.parametrize("sizes", [[4] * 7, [1] * 28, [3, 9, 16], [28], [10, 18, 0], [2, 2, 24]])
def test_stream_equals_whole_decode(vae, sizes):
    latents = torch.randn(2, sum(sizes), 64, generator=torch.Generator().manual_seed(4))
    whole = vae.decode_whole(latents)
    outs = streamed(vae, latents, sizes)
    hop, per = vae.hop, vae.samples_per_latent
    lengths = [o.shape[-1] for o in outs]
    if len(sizes) > 1:  # nothing first; then the previous chunk, less the 'same' trim on the first emission
        assert lengths[0] == 0 and lengths[1] == sizes[0] * per - (vae.decoder.head.istft.pad)
    assert sum(lengths) == whole.shape[-1] == sum(sizes) * per and whole.shape[-1] % hop == 0
    assert torch.allclose(torch.cat(outs, dim=-1), whole, atol=1e-6, rtol=0)


def test_stream_rows_are_independent(vae):
    latents = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(5))
    both = torch.cat(streamed(vae, latents, [4, 4, 4]), dim=-1)
    for row in range(2):
        alone = torch.cat(streamed(vae, latents[row : row + 1], [4, 4, 4]), dim=-1)
        assert torch.allclose(both[row : row + 1], alone, atol=1e-6, rtol=0)


def test_bad_latents_are_refused(vae):
    with pytest.raises(ValueError, match="latents"):
        vae.decode_whole(torch.zeros(1, 4, 32))


def test_without_patch_upsample_the_first_chunk_speaks():
    """patch_size -1: no upsample, so no lookahead; chunks come back at once (minus the 'same' trim)."""
    data = json.loads((VAE / "config.json").read_text())
    data["patch_size"] = -1
    torch.manual_seed(0)
    vae = AudioVAE(AudioVAEConfig.from_dict(data)).eval()
    latents = torch.randn(1, 20, 64, generator=torch.Generator().manual_seed(6))
    whole = vae.decode_whole(latents)
    assert whole.shape == (1, 20 * 32)
    outs = streamed(vae, latents, [5, 5, 10, 0])
    assert [o.shape[-1] for o in outs] == [5 * 32 - 48, 5 * 32, 10 * 32, 48]  # the empty last push flushes
    assert torch.allclose(torch.cat(outs, dim=-1), whole, atol=1e-6, rtol=0)


def test_sliding_window_is_in_effect():
    """The same weights with full attention agree for the first `window` frames only."""
    vae = AudioVAE.load(VAE_SLIDING, CPU, torch.float32)
    backbone = json.loads((VAE_SLIDING / "config.json").read_text())["dec_kwargs"]["backbone"]
    full = Qwen2Model(Qwen2Config(**{**backbone, "use_sliding_window": False})).eval()
    full.load_state_dict(vae.decoder.decoder.state_dict())
    x = torch.randn(1, 20, 64, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        windowed, plain = vae.decoder.backbone_whole(x), full(inputs_embeds=x).last_hidden_state
    assert torch.allclose(windowed[:, :6], plain[:, :6], atol=1e-6)
    assert (windowed[:, 6:] - plain[:, 6:]).abs().amax(dim=-1).min() > 1e-4


def test_stream_refuses_bad_latents_and_pushes_after_the_last(vae):
    stream = vae.start_stream()
    with pytest.raises(ValueError, match="latents"):
        stream.push(torch.zeros(1, 4), last=False)
    stream.push(torch.zeros(1, 4, 64), last=True)
    with pytest.raises(RuntimeError, match="last chunk"):
        stream.push(torch.zeros(1, 4, 64), last=True)
