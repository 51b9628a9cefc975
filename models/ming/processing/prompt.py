"""Ming's chat text and its media placeholders: messages -> text -> expanded text -> checked token ids.

Flow: `render_chat` writes the flash chat format (default system prompt, `<role>..</role>` turns,
`<IMAGE>`/`<AUDIO>`/`<VIDEO>` where media items sit) -> `expand_placeholders` replaces each
placeholder by its start token, one patch token per LLM token and its end token -> the tokenizer ->
`check_media_tokens` verifies the patch runs and returns `audio_placeholder_loc_lens`.
Token ids come from the checkpoint's tokenizer (`SpecialTokens.from_tokenizer`), never constants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models.ming.processing.errors import MediaError

DEFAULT_PERSONA = "你是一个友好的AI助手。"
PLACEHOLDERS = {"image": "<IMAGE>", "audio": "<AUDIO>", "video": "<VIDEO>"}
_ROLE_ALIASES = {"human": "HUMAN", "user": "HUMAN", "assistant": "ASSISTANT"}

# The token strings of Ming's media markup (spec A.5 / layout §4); their ids are the tokenizer's.
TOKEN_STRINGS = {
    "image_start": "<image>",
    "image_patch": "<imagePatch>",
    "image_end": "</image>",
    "video_start": "<video>",
    "video_patch": "<framePatch>",
    "video_end": "</video>",
    "audio_start": "<audio>",
    "audio_patch": "<audioPatch>",
    "audio_end": "</audio>",
}


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the media markup and the turn terminator, read from the checkpoint's tokenizer."""

    eos: str  # the tokenizer's eos token text: <|role_end|> in Ling-2.0 tokenizers
    eos_id: int
    image_start: int
    image_patch: int
    image_end: int
    video_start: int
    video_patch: int
    video_end: int
    audio_start: int
    audio_patch: int
    audio_end: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialTokens:
        """ValueError naming the token when the tokenizer lacks one."""
        ids = {}
        for field, text in TOKEN_STRINGS.items():
            tid = tokenizer.convert_tokens_to_ids(text)
            if tid is None or tid == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no {text} token ({field}); is this a Ming checkpoint?")
            ids[field] = int(tid)
        if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token (Ming ends turns with it)")
        return cls(eos=tokenizer.eos_token, eos_id=int(tokenizer.eos_token_id), **ids)


# ---- chat format ---------------------------------------------------------------------------------
def system_prompt(persona: str | None = None, thinking: bool = False) -> str:
    """`<role>SYSTEM</role>` + persona + "\\n\\ndetailed thinking off|on" (without the eos)."""
    switch = "on" if thinking else "off"
    return f"<role>SYSTEM</role>{persona or DEFAULT_PERSONA}\n\ndetailed thinking {switch}"


def render_chat(
    messages: Sequence[Mapping[str, Any]], eos: str, thinking: bool = False
) -> tuple[str, dict[str, int]]:
    """Messages -> (Ming chat text ending in the assistant prefix, media items per kind).

    A message is {"role", "content"}; content is a string or a list of items {"type": "text",
    "text"} / {"type": "image" | "audio" | "video"} (a media item becomes its placeholder; the bytes
    come separately, in the same order). Roles: HUMAN/user and ASSISTANT; a leading "system"
    message replaces the default persona sentence. The last message must be the human's.
    """
    messages = list(messages)
    persona = None
    if messages and str(messages[0].get("role", "")).lower() == "system":
        persona = _content_text(messages[0], 0)
        messages = messages[1:]
    if not messages:
        raise MediaError("messages must hold at least one HUMAN message")
    counts = dict.fromkeys(PLACEHOLDERS, 0)
    text = system_prompt(persona, thinking) + eos
    for i, message in enumerate(messages):
        role = _ROLE_ALIASES.get(str(message.get("role", "")).lower())
        if role is None:
            raise MediaError(
                f"message {i + 1}: role must be HUMAN (user) or ASSISTANT, got {message.get('role')!r}"
            )
        if i == len(messages) - 1 and role != "HUMAN":
            raise MediaError("the last message must be HUMAN (user): Ming answers the human's turn")
        text += f"<role>{role}</role>" + _content(message, i, counts) + eos
    return text + "<role>ASSISTANT</role>", counts


def _content(message: Mapping[str, Any], i: int, counts: dict[str, int]) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    out = []
    for j, item in enumerate(content):
        kind = item.get("type")
        if kind == "text":
            if not isinstance(item.get("text"), str):
                raise MediaError(f"message {i + 1}, item {j + 1}: text must be a string")
            out.append(item["text"])
        elif kind in PLACEHOLDERS:
            counts[kind] += 1
            out.append(PLACEHOLDERS[kind])
        else:
            raise MediaError(f"message {i + 1}, item {j + 1}: unknown type {kind!r}")
    return "".join(out)


def _content_text(message: Mapping[str, Any], i: int) -> str:
    counts = dict.fromkeys(PLACEHOLDERS, 0)
    text = _content(message, i, counts)
    if any(counts.values()):
        raise MediaError("the system message may hold text only")
    return text


# ---- placeholders --------------------------------------------------------------------------------
def expand_placeholders(
    text: str,
    image_tokens: Sequence[int],
    video_tokens: Sequence[int],
    audio_tokens: Sequence[int],
    video_times: Sequence[Sequence[float]] | None = None,
) -> str:
    """Each placeholder -> start + N patch tokens + end, in order (spec A.5).

    `<IMAGE>` -> `<image>` N×`<imagePatch>` `</image>\\n`; `<VIDEO>` -> `<video>` N×`<framePatch>`
    `</video>\\n`; `<AUDIO>` -> `<audio>` L×`<audioPatch>` `</audio>`. A text without any `<AUDIO>`
    gets its audio appended at the end (each followed by a newline), as Ming's processor does.
    Images and videos need exactly one placeholder each: MediaError otherwise.
    With `video_times` (2.0's interleaved frame timestamps: per video, one time per temporal patch)
    `<VIDEO>` -> `<video>`, then per frame `<{t:.1f} seconds><image>` (N/frames)×`<framePatch>`
    `</image>`, then `</video>` (no newline), as 2.0's processor writes it.
    """
    text = _replace(text, "image", image_tokens)
    if video_times is not None:
        markups = [_timed_video(n, times) for n, times in zip(video_tokens, video_times, strict=True)]
        text = _replace(text, "video", video_tokens, markups)
    else:
        text = _replace(text, "video", video_tokens)
    if audio_tokens and PLACEHOLDERS["audio"] not in text:
        return text + "".join(_markup("audio", n) + "\n" for n in audio_tokens)
    return _replace(text, "audio", audio_tokens)


def check_placeholders(text: str, sent: Mapping[str, int]) -> None:
    """Before any media work: one placeholder per image and video part; audio: one each, or none."""
    for kind, n in sent.items():
        found = text.count(PLACEHOLDERS[kind])
        if found != n and not (kind == "audio" and found == 0):
            raise MediaError(
                f"the prompt has {found} {PLACEHOLDERS[kind]} placeholder(s) but the request sent "
                f"{n} {kind} part(s)"
            )


def _markup(kind: str, n: int) -> str:
    start, patch, end = (TOKEN_STRINGS[f"{kind}_{part}"] for part in ("start", "patch", "end"))
    return start + patch * n + end + ("" if kind == "audio" else "\n")


def _timed_video(n: int, times: Sequence[float]) -> str:
    """One video's interleaved markup: n frame-patch tokens split evenly over its timed frames."""
    if not times or n % len(times):
        raise ValueError(f"{n} video tokens do not split over {len(times)} frames")
    frame = TOKEN_STRINGS["image_start"] + TOKEN_STRINGS["video_patch"] * (n // len(times))
    frames = "".join(f"<{t:.1f} seconds>{frame}{TOKEN_STRINGS['image_end']}" for t in times)
    return TOKEN_STRINGS["video_start"] + frames + TOKEN_STRINGS["video_end"]


def _replace(text: str, kind: str, tokens: Sequence[int], markups: Sequence[str] | None = None) -> str:
    check_placeholders(text, {kind: len(tokens)})
    pieces = text.split(PLACEHOLDERS[kind])
    markups = markups if markups is not None else [_markup(kind, n) for n in tokens]
    out = [pieces[0]]
    for markup, piece in zip(markups, pieces[1:], strict=True):
        out += [markup, piece]
    return "".join(out)


def check_media_tokens(
    ids: Sequence[int],
    tokens: SpecialTokens,
    image_tokens: Sequence[int],
    video_tokens: Sequence[int],
    audio_tokens: Sequence[int],
    video_frames: int = 0,
) -> list[list[int]]:
    """Verify each media run in `ids`; returns audio_placeholder_loc_lens [[start + 1, L], ...].

    The prompt's own text could spell media tokens (e.g. a literal "<imagePatch>"); the counts then
    disagree with the media and the model would splice the wrong rows, so that is a MediaError.
    `video_frames`: interleaved video frames, each opened by an `<image>` of its own.
    """
    expected = {
        "image_patch": sum(image_tokens),
        "image_start": len(image_tokens) + video_frames,
        "video_patch": sum(video_tokens),
        "video_start": len(video_tokens),
        "audio_patch": sum(audio_tokens),
        "audio_start": len(audio_tokens),
        "audio_end": len(audio_tokens),
    }
    for field, want in expected.items():
        got = sum(1 for i in ids if i == getattr(tokens, field))
        if got != want:
            raise MediaError(
                f"the prompt holds {got} {TOKEN_STRINGS[field]} token(s) where its media make {want}: "
                "the text itself must not spell Ming's media tokens"
            )
    ids = list(ids)
    starts = [k for k, i in enumerate(ids) if i == tokens.audio_start]
    loc_lens = []
    for k, n in zip(starts, audio_tokens, strict=True):
        run = ids[k + 1 : k + 2 + n]
        if run[:n] != [tokens.audio_patch] * n or run[n:] != [tokens.audio_end]:
            raise MediaError("an <audio> span is broken up by other tokens")
        loc_lens.append([k + 1, n])
    return loc_lens


__all__ = [
    "DEFAULT_PERSONA",
    "PLACEHOLDERS",
    "TOKEN_STRINGS",
    "SpecialTokens",
    "check_media_tokens",
    "check_placeholders",
    "expand_placeholders",
    "render_chat",
    "system_prompt",
]
