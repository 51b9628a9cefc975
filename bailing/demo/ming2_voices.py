"""The demo talker's speaker side: a stand-in CAM++ speaker encoder (`talker/campplus.onnx`) and the
voice presets (`talker/data/voice_name.json` + their prompt wavs under `talker/data/spks/`).

CAM++ stand-in: ONNX input `fbank` float [B, frames, 80] (kaldi fbank, mean over time removed, as
`models.ming.speech.voices.campplus_features` makes it) -> statistics pooling (mean and standard
deviation over frames) [B, 160] -> a seeded random linear map -> output `xvector` float [B, 192].
Opset 17 / IR 8, which every current onnxruntime runs. Prompt wavs: deterministic voiced-like signals
(a gliding pitch with vibrato, decaying harmonics, a syllable-rate envelope, a little breath noise),
16-bit PCM at the VAE's sample rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper

from bailing.demo.tokenizer import write_json
from models.ming.speech.talker_config import XVECTOR_DIM
from models.ming.speech.voices import CAMPPLUS_MEL_BINS, DEFAULT_VOICE

CAMPPLUS_OPSET = 17
CAMPPLUS_IR_VERSION = 8
VOICE_PRESETS_FILE = "data/voice_name.json"  # relative to talker/ (upstream's layout)


@dataclass(frozen=True)
class DemoVoice:
    """One preset: its name, transcript, wav path (relative to talker/) and how the wav sounds."""

    name: str
    prompt_text: str
    wav: str
    pitch_hz: float
    seconds: float
    syllables_per_s: float


DEMO_VOICES: tuple[DemoVoice, ...] = (
    DemoVoice(DEFAULT_VOICE, "感谢你的认可。", "data/spks/prompt.wav", 220.0, 1.5, 4.0),  # upstream's text
    DemoVoice("narrator", "Thank you for listening.", "data/spks/narrator.wav", 110.0, 2.0, 3.0),
)


def campplus_model(seed: int) -> onnx.ModelProto:
    """The stand-in speaker encoder (see the module docstring), weights drawn from `seed`."""
    rng = np.random.default_rng(seed)
    stats = 2 * CAMPPLUS_MEL_BINS
    weight = (rng.standard_normal((stats, XVECTOR_DIM)) / np.sqrt(stats)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(XVECTOR_DIM)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["fbank"], ["mean"], axes=[1], keepdims=0),  # (B, 80)
        helper.make_node("Mul", ["fbank", "fbank"], ["square"]),  # (B, T, 80)
        helper.make_node("ReduceMean", ["square"], ["mean_square"], axes=[1], keepdims=0),  # (B, 80)
        helper.make_node("Mul", ["mean", "mean"], ["mean_squared"]),
        helper.make_node("Sub", ["mean_square", "mean_squared"], ["variance_raw"]),
        helper.make_node("Relu", ["variance_raw"], ["variance"]),  # rounding can make it slightly < 0
        helper.make_node("Add", ["variance", "epsilon"], ["variance_eps"]),
        helper.make_node("Sqrt", ["variance_eps"], ["std"]),
        helper.make_node("Concat", ["mean", "std"], ["stats"], axis=1),  # (B, 160)
        helper.make_node("MatMul", ["stats", "weight"], ["projected"]),  # (B, 192)
        helper.make_node("Add", ["projected", "bias"], ["xvector"]),
    ]
    graph = helper.make_graph(
        nodes,
        "campplus_demo",
        [helper.make_tensor_value_info("fbank", TensorProto.FLOAT, ["batch", "frames", CAMPPLUS_MEL_BINS])],
        [helper.make_tensor_value_info("xvector", TensorProto.FLOAT, ["batch", XVECTOR_DIM])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(np.array(1e-5, dtype=np.float32), "epsilon"),
        ],
    )
    model = helper.make_model(
        graph,
        producer_name="bailing-demo",
        opset_imports=[helper.make_opsetid("", CAMPPLUS_OPSET)],
        ir_version=CAMPPLUS_IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_campplus(path: Path, seed: int) -> None:
    path.write_bytes(campplus_model(seed).SerializeToString())


def prompt_signal(voice: DemoVoice, rate: int) -> np.ndarray:
    """The voice's prompt as float32 samples in [-0.5, 0.5] (deterministic)."""
    t = np.arange(int(voice.seconds * rate)) / rate
    # pitch: a falling phrase contour with a little vibrato
    pitch = voice.pitch_hz * (1.1 - 0.2 * t / voice.seconds) * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    harmonics = range(1, int(0.42 * rate / voice.pitch_hz))  # below Nyquist at the contour's top
    voiced = sum(np.sin(k * phase) * k**-1.2 * (1 + np.exp(-(((k * voice.pitch_hz - 700) / 300) ** 2)))
                 for k in harmonics)  # fmt: skip
    syllables = np.sin(np.pi * ((t * voice.syllables_per_s) % 1.0)) ** 0.8
    fade = np.minimum(1.0, np.minimum(t, voice.seconds - t) / 0.02)
    breath = 0.02 * np.random.default_rng(int(voice.pitch_hz)).standard_normal(t.shape)
    signal = (voiced * syllables + breath) * fade
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


def write_voices(talker_dir: Path, rate: int) -> None:
    """`data/voice_name.json` ({name: {prompt_text, prompt_wav_path}}) and each preset's wav."""
    presets = {}
    for voice in DEMO_VOICES:
        path = talker_dir / voice.wav
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), prompt_signal(voice, rate), rate, subtype="PCM_16", format="WAV")
        presets[voice.name] = {"prompt_text": voice.prompt_text, "prompt_wav_path": voice.wav}
    write_json(talker_dir / VOICE_PRESETS_FILE, presets)
