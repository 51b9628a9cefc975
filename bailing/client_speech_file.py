"""Writing a streamed clip to a file as it arrives, in the right container.

Flow: `AudioChunk`s (from `synthesize_speech_stream`, or the `audio` of a spoken reply's `Chunk`s) ->
`SpeechFileWriter.write` -> the file: "wav" gets a 44-byte header with zero sizes first, each chunk's
PCM appended, and the header rewritten with the real sizes when the writer closes (so the file plays
while it grows and is exact at the end); "pcm" (raw s16le mono) and "opus" (Ogg pages) are the chunks
as they are. `write_speech` does it for a whole stream and returns the summary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from bailing.client_speech import AudioChunk, SpeechResult
from pipelines.audio_files import WAV_HEADER_BYTES, wav_header
from pipelines.protocol import AUDIO_FORMATS


class SpeechFileWriter:
    """Appends a clip's chunks to `path` (created or truncated); use it as a context manager or call
    `close()` (which finishes a WAV header) or `abort()` (which removes the partial file)."""

    def __init__(self, path: str | os.PathLike, format: str, sample_rate: int = 0) -> None:
        if format not in AUDIO_FORMATS:
            raise ValueError(f"format must be one of {', '.join(AUDIO_FORMATS)}, got {format!r}")
        self.path = Path(path)
        self.format = format
        self.sample_rate = sample_rate  # taken from the chunks when 0
        self.data_bytes = 0  # audio bytes written (the WAV header not counted)
        self.chunks = 0
        self.summary: SpeechResult | None = None
        self._file: BinaryIO | None = self.path.open("wb")
        if format == "wav":  # a placeholder: sizes (and a rate still unknown) are rewritten at close
            self._file.write(wav_header(sample_rate or 1, 0))

    def write(self, chunk: AudioChunk) -> None:
        """Append one chunk (the last one's summary is kept; it has no audio)."""
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        if chunk.summary is not None:
            self.summary = chunk.summary
        if chunk.sample_rate and not self.sample_rate:
            self.sample_rate = chunk.sample_rate
        if chunk.audio:
            self._file.write(chunk.audio)
            self._file.flush()
            self.data_bytes += len(chunk.audio)
            self.chunks += 1

    def close(self) -> Path:
        """Finish the file (a WAV file gets its real header); returns its path."""
        if self._file is not None:
            if self.format == "wav":
                rate = self.sample_rate or (self.summary.sample_rate if self.summary else 0) or 1
                self._file.seek(0)
                self._file.write(wav_header(rate, self.data_bytes))
            self._file.close()
            self._file = None
        return self.path

    def abort(self) -> None:
        """Close and remove the partial file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)

    @property
    def file_bytes(self) -> int:
        return self.data_bytes + (WAV_HEADER_BYTES if self.format == "wav" else 0)

    def __enter__(self) -> SpeechFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_speech(
    chunks: Iterable[AudioChunk], path: str | os.PathLike, format: str, sample_rate: int = 0
) -> SpeechResult | None:
    """Write a whole stream of chunks to `path` as they come; returns the summary (None if the stream
    ended without its last chunk). The file is removed if the stream fails."""
    writer = SpeechFileWriter(path, format, sample_rate)
    try:
        for chunk in chunks:
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.summary
