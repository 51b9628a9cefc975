"""A tiny speaking checkpoint for tests: `<dir>/talker/` = the golden tiny talker, tokenizer and AudioVAE
(linked), a tiny CAM++ stand-in (`campplus.onnx`, written here with the `onnx` package: fbank
[1, frames, 80] -> MatMul -> mean over frames -> [1, 192]) and voice presets with their prompt wavs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import soundfile
from onnx import TensorProto, helper, numpy_helper

from tests.models.ming.speech_golden import TALKER, available

PRESETS = {
    "DB30": {"prompt_text": "感谢你的认可。", "prompt_wav_path": "data/spks/prompt.wav"},
    "bright": {"prompt_text": "Hi there.", "prompt_wav_path": "data/spks/bright.wav"},
}


def tone(seconds: float, rate: int, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    """A voiced-ish test signal: a tone with a little noise, float32 in [-1, 1]."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.05, t.shape)
    return (0.4 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=fmt)
    return out.getvalue()


def write_campplus(path: Path, seed: int = 5) -> None:
    """An ONNX graph with CAM++'s interface: input "feats" [1, frames, 80] -> "embedding" [1, 192]."""
    weight = np.random.default_rng(seed).normal(0, 0.1, (80, 192)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["feats", "w"], ["projected"]),
            helper.make_node("ReduceMean", ["projected", "axes"], ["embedding"], keepdims=0),
        ],
        "campplus_tiny",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, "frames", 80])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 192])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_speech_checkpoint(root: Path, presets: dict | None = PRESETS, campplus: bool = True) -> Path:
    """`root/talker/` in the checkpoint layout; returns `root` (the model folder)."""
    if not available():
        raise FileNotFoundError("the Ming speech golden data is missing")
    talker = root / "talker"
    talker.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "llm", "vae"):
        (talker / name).symlink_to(TALKER / name)
    if campplus:
        write_campplus(talker / "campplus.onnx")
    if presets:
        (talker / "data" / "spks").mkdir(parents=True)
        (talker / "data" / "voice_name.json").write_text(json.dumps(presets, ensure_ascii=False))
        for i, entry in enumerate(presets.values()):
            rate = 24000 if i % 2 else 16000  # one preset needs resampling
            soundfile.write(talker / entry["prompt_wav_path"], tone(1.2, rate, 200.0 + 60 * i, i), rate)
    return root
