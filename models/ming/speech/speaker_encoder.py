"""CAM++ speaker encoder (upstream `SpkembExtractor`, file `talker/campplus.onnx`) through onnxruntime:
a 16 kHz waveform -> 80-bin kaldi fbank with the time mean removed (`voices.campplus_features`) ->
the ONNX graph -> one x-vector [1, X] for the talker's `spk_head`.

The graph's input name is read from the session (as upstream does); its input is [1, frames, 80]
float32 and its output [1, X] (X = 192). Upstream runs it on the CPU provider with 2 intra-op threads
and full graph optimisation; so does this.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.errors import CheckpointError
from models.ming.speech.talker_config import XVECTOR_DIM
from models.ming.speech.voices import campplus_features

if TYPE_CHECKING:
    import onnxruntime

CAMPPLUS_FILE = "campplus.onnx"
INTRA_OP_THREADS = 2  # upstream's SessionOptions


class SpeakerEncoder:
    """One onnxruntime session; `__call__` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def load(cls, path: str | Path) -> SpeakerEncoder:
        """`talker/campplus.onnx` -> a CPU session; CheckpointError if the file is missing or unusable."""
        import onnxruntime  # here: a worker without a talker never loads it

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"missing {path}")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = INTRA_OP_THREADS
        try:
            session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
            raise CheckpointError(f"{path} is not a usable ONNX model ({exc})") from None
        return cls(session)

    def __call__(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k [channels, N] at 16 kHz (the first channel is used) -> x-vector [1, X] float32."""
        feats = campplus_features(wav16k[:1].cpu())  # (1, frames, 80)
        out = self.session.run(None, {self.input_name: feats.numpy().astype(np.float32)})[0]
        xvector = torch.from_numpy(np.asarray(out, dtype=np.float32)).reshape(1, -1)  # (1, X)
        if xvector.shape[1] != XVECTOR_DIM:
            raise CheckpointError(f"{CAMPPLUS_FILE} gives {xvector.shape[1]} values, not {XVECTOR_DIM}")
        return xvector
