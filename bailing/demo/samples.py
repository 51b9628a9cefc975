"""Sample media next to the demo checkpoints, so the README's Ming calls run as written.

`write_demo_samples(folder)` writes `photo.jpg` (a 320x240 colour gradient), `speech.wav` (2 s of
two tones at 16 kHz; the demo model has no speech to recognise, any audio will do) and `clip.mp4`
(2 s of a moving gradient at 4 fps), each once. Made with Pillow, soundfile and PyAV, the same
libraries the media front end decodes with.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SAMPLES = ("photo.jpg", "speech.wav", "clip.mp4")


def _gradient(height: int, width: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    rgb = [(x + shift) % 256, (y * 2) % 256, ((x + y) // 2 + shift) % 256]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def _photo() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_gradient(240, 320)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _speech(rate: int = 16000, seconds: float = 2.0) -> bytes:
    import soundfile

    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 660 * t) * np.exp(-t)
    buf = io.BytesIO()
    soundfile.write(buf, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _clip(fps: int = 4, seconds: int = 2, size: int = 112) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(fps * seconds):
            frame = av.VideoFrame.from_ndarray(_gradient(size, size, shift=16 * i), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def write_demo_samples(folder: str | Path) -> dict[str, Path]:
    """Ensure `folder` holds every sample (existing files are kept); returns {name: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    makers = {"photo.jpg": _photo, "speech.wav": _speech, "clip.mp4": _clip}
    paths = {}
    for name in SAMPLES:
        path = folder / name
        if not path.is_file():
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(makers[name]())
            tmp.replace(path)
        paths[name] = path
    return paths
