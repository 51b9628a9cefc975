"""Trailing-silence trimming of one spoken segment (after upstream's `BailingTalker2.silence_holder`):
waveform chunks in, the same audio out with a long silent tail cut to `KEEP_S`.

The segment is cut into 0.1 s frames from its first sample; a frame is silent when its mean absolute
value is at most `THRESHOLD`. Audio up to the end of the last loud frame goes out as soon as it is
known; what follows (silent frames and the unfinished frame) is held until a loud frame follows, or
until the segment's last chunk, when at most `KEEP_S` of it goes out. The output therefore depends on
the samples only, never on where the chunks were cut. (Upstream, differently: a held tail can be
emitted twice after a silence in mid-segment; not reproduced.)
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.1
THRESHOLD = 1e-3
KEEP_S = 0.3


class SilenceTrimmer:
    def __init__(self, sample_rate: int) -> None:
        self.frame = max(1, int(sample_rate * FRAME_S))
        self.keep = int(sample_rate * KEEP_S)
        self._held = np.zeros(0, np.float32)  # starts on a frame boundary
        self._ended = False

    def push(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        """The samples that may go out now (float32 [n])."""
        if self._ended:
            raise RuntimeError("the segment has ended")
        self._ended = last
        buf = np.concatenate([self._held, np.asarray(x, dtype=np.float32).reshape(-1)])
        frames = buf.shape[0] // self.frame
        loud = np.abs(buf[: frames * self.frame]).reshape(frames, self.frame).mean(axis=1) > THRESHOLD
        end = (int(np.flatnonzero(loud)[-1]) + 1) * self.frame if loud.any() else 0
        out, self._held = buf[:end], buf[end:]
        if last:
            out, self._held = np.concatenate([out, self._held[: self.keep]]), self._held[:0]
        return out
