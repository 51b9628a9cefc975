"""What the serving layers need to know about a model family besides its architecture class.

Torch-free descriptors: `FAMILIES[name]` -> `Family` (its architectures, the input modalities it accepts,
its media processor and ASR instruction, and, for reasoning models, the `ThinkTags` that delimit the
reasoning). Workers validate `--family` against `FAMILIES`;
pipelines read the tags to split reasoning from the answer and to force the end of a thinking budget.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThinkTags:
    """The reasoning block of a reasoning model's output: `open` reasoning `close` answer.

    `forced_close` is what a thinking budget appends when the reasoning runs out of tokens: the
    closing tag and the blank line the chat template puts between reasoning and answer.
    """

    open: str = "<think>"
    close: str = "</think>"
    forced_close: str = "</think>\n\n"

    def __post_init__(self) -> None:
        if not self.open or not self.close:
            raise ValueError("ThinkTags.open and ThinkTags.close must be non-empty")
        if not self.forced_close.startswith(self.close):
            raise ValueError(f"ThinkTags.forced_close must start with the closing tag {self.close!r}")


@dataclass(frozen=True)
class ToolCallTags:
    """How a family writes a tool call: `open before {"name": ..., "arguments": {...}} after close`,
    calls separated by `between` (Ling's chat template: `<tool_call>\n{...}\n</tool_call>`, where the
    tags are special tokens)."""

    open: str = "<tool_call>"
    close: str = "</tool_call>"
    before: str = "\n"
    after: str = "\n"
    between: str = "\n"


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    reasoning: ThinkTags | None = None  # None: the model answers directly
    modalities: tuple[str, ...] = ("text",)
    # A multimodal family's request front end, "module:Class" with `from_pretrained(folder)` and
    # `process(messages_or_prompt, images=, audios=, videos=, thinking=)` (torch-side; imported lazily).
    processor: str | None = None
    # The user-turn instruction that precedes the audio in a transcription request (None: no ASR).
    transcribe_prompt: str | None = None
    tool_calls: ToolCallTags | None = None  # None: the family takes no tools


def known_families() -> dict[str, Family]:
    """Every family this installation can serve, by name."""
    from models.ling.family import LING
    from models.llada2.family import LLADA2
    from models.ming.family import MING
    from models.ring.family import RING

    return {f.name: f for f in (LING, RING, LLADA2, MING)}


def get_family(name: str) -> Family:
    families = known_families()
    if name not in families:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(families)}")
    return families[name]
