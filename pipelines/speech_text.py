"""Text segmentation for speech synthesis (our rules after upstream's `omni_audio_generation` front end
and `front/text_segment_cut.py`): text -> the segments the talker speaks one after another.

Flow: characters gather until a break (`Segmenter.feed`, any delta boundaries: the result depends on
the text only) -> the gathered text is cut into fragments of at most `max_length` semantic units
(`cut`) -> each fragment is a segment. A break is sentence-ending punctuation (。！？，!?), or a "."
not after a digit, once at least 12 characters are gathered (8 after the first segment); a newline
becomes "，" after a CJK character, "." after a letter, else a space, and breaks on the same length
rule. `flush` ends the text: what is left becomes segments if it holds a letter, digit or CJK
character. `cut` splits at sentence ends, then clauses (，,;；), keeps decimal points and A.B.
abbreviations whole, merges short clauses, splits over-long clauses by semantic units and packs the
pieces greedily up to `max_length`. Unlike upstream, punctuation is never rewritten (English keeps
its "." and ","), and text normalisation (upstream's TalkerTN FSTs) is not applied.
`max_patches` is upstream's runaway guard as a step limit: a segment stops once its audio reaches
max(2 s, len(text) / 2.75 chars per second).
"""

from __future__ import annotations

import math
import re

MAX_LENGTH = 50  # semantic units per segment (upstream max_length)
MIN_CLAUSE = 5  # a clause shorter than this joins its neighbour (upstream min_tail_length)
FIRST_MIN_CHARS = 12  # characters gathered before the first break
LATER_MIN_CHARS = 8  # ... before later breaks
BREAKS = "。！？，!?"
SENTENCE_ENDS = "。！？.!?"
CLAUSE_ENDS = "，,;；"
# upstream's runaway guard: stop once audio_s * 16000 / 5818 >= len(text) and audio_s > 2
CHARS_PER_SECOND = 16000 / 5818
MIN_GUARD_S = 2.0

_CJK = re.compile(r"[\u4e00-\u9fff]")
_CONTENT = re.compile(r"[^\W_]")  # a letter, digit or CJK character
_SPOKEN = re.compile(r"[a-zA-Z0-9\u4e00-\u9fff]")
_UNITS = re.compile(r"[\u4e00-\u9fa5]|[a-zA-Z]+|[^a-zA-Z\u4e00-\u9fa5]+")
_DOT = "\x00"  # stands in for a protected "." while cutting


def semantic_length(text: str) -> int:
    """CJK characters + English words (upstream `get_semantic_length`)."""
    return len(re.findall(r"[\u4e00-\u9fa5]", text)) + len(re.findall(r"[a-zA-Z]+", text))


def has_content(text: str) -> bool:
    return bool(_CONTENT.search(text))


def max_patches(text: str, seconds_per_patch: float) -> int:
    """Talker steps a segment may take before the runaway guard stops it."""
    seconds = max(MIN_GUARD_S, len(text) / CHARS_PER_SECOND)
    return max(1, math.ceil(seconds / seconds_per_patch))


class Segmenter:
    """Incremental segmentation of a text being written (a chat reply): `feed` deltas, then `flush`."""

    def __init__(self, max_length: int = MAX_LENGTH) -> None:
        self.max_length = max_length
        self._pending: list[str] = []
        self._emitted = 0

    def feed(self, delta: str) -> list[str]:
        """The segments finished by `delta` (often none)."""
        out: list[str] = []
        for ch in delta:
            if self._gather(ch) and len(self._pending) >= self._min_chars:
                out += self._take()
        return out

    def flush(self) -> list[str]:
        """The text is complete: the rest, if it says anything."""
        text = "".join(self._pending)
        self._pending = []
        return self._emit(text) if _SPOKEN.search(text) else []

    @property
    def _min_chars(self) -> int:
        return LATER_MIN_CHARS if self._emitted else FIRST_MIN_CHARS

    def _gather(self, ch: str) -> bool:
        """Add `ch` to the pending text; True if it may end a segment."""
        pending = self._pending
        if ch in BREAKS:
            pending.append(ch)
            return True
        if ch == ".":
            breaks = bool(pending) and not pending[-1].isdigit()  # "3." ends a number, not a sentence
            pending.append(ch)
            return breaks
        if ch != "\n":
            pending.append(ch)
            return False
        if not pending:
            return False
        last = pending[-1]
        if _CJK.search("".join(pending)):
            if _CJK.match(last):
                pending.append("，")
        elif last.isascii() and last.isalpha():
            pending.append(".")
        elif not last.isspace():
            pending.append(" ")
        return True

    def _take(self) -> list[str]:
        text = "".join(self._pending)
        self._pending = []
        return self._emit(text)

    def _emit(self, text: str) -> list[str]:
        out = [s for s in (f.lstrip("，,:;" + " \t").rstrip() for f in cut(text, self.max_length)) if s]
        self._emitted += len(out)
        return out


def segments(text: str, max_length: int = MAX_LENGTH) -> list[str]:
    """A whole text's segments (the same as feeding it in any pieces, then flushing)."""
    segmenter = Segmenter(max_length)
    return segmenter.feed(text) + segmenter.flush()


# ---- cutting one gathered text -----------------------------------------------------------------------
def cut(text: str, max_length: int = MAX_LENGTH) -> list[str]:
    """Fragments of at most `max_length` semantic units (one over-long word stays whole)."""
    if not has_content(text):
        return []
    work = re.sub(r"(\d)\.(\d)", rf"\1{_DOT}\2", text)
    for _ in range(3):  # overlapping matches: U.S.A.
        work = re.sub(r"([A-Z])\.([A-Z])", rf"\1{_DOT}\2", work)
    work = work.replace("\n", " ").replace("。，", "。")
    if semantic_length(work) <= max_length:
        pieces = [work.strip()]
    else:
        pieces = []
        for sentence in _split_after(work, SENTENCE_ENDS):
            pieces = _pack_sentence(pieces, sentence, max_length)
    return [p.replace(_DOT, ".") for p in pieces if has_content(p)]


def _split_after(text: str, ends: str) -> list[str]:
    """Pieces of `text`, each ending with one of `ends` (the last maybe not), stripped, non-empty."""
    parts, start = [], 0
    for i, ch in enumerate(text):
        if ch in ends:
            parts.append(text[start : i + 1])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _clauses(sentence: str) -> list[str]:
    """Clauses; one without content (stray punctuation) joins the clause before it."""
    clauses: list[str] = []
    for piece in _split_after(sentence, CLAUSE_ENDS):
        if has_content(piece) or not clauses:
            clauses.append(piece)
        else:
            clauses[-1] += piece
    return clauses


def _pack_sentence(fragments: list[str], sentence: str, max_length: int) -> list[str]:
    clauses, i = _clauses(sentence), 0
    while i < len(clauses):
        clause = clauses[i]
        if semantic_length(clause) < MIN_CLAUSE and i + 1 < len(clauses):
            joined = _join(clause, clauses[i + 1])
            if semantic_length(joined) <= max_length:
                fragments = _append(fragments, joined, max_length)
                i += 2
                continue
        if semantic_length(clause) > max_length:
            for piece in _split_long(clause, max_length):
                fragments = _append(fragments, piece, max_length)
        else:
            fragments = _append(fragments, clause, max_length)
        i += 1
    return fragments


def _join(left: str, right: str) -> str:
    """Two pieces, with a space between when the right one starts with a letter or digit."""
    space = " " if re.match(r"[a-zA-Z0-9]", right) and not left.endswith(" ") else ""
    return left + space + right


def _append(fragments: list[str], text: str, max_length: int) -> list[str]:
    """Add `text` to the last fragment if it fits (a short tail after a full stop starts its own)."""
    text = text.lstrip("，,:;" + " \t")
    if not has_content(text):
        return fragments
    if not fragments:
        return [text]
    last, size = fragments[-1], semantic_length(text)
    if semantic_length(last) + size > max_length or (last.endswith(("。", "！", "？")) and size < MIN_CLAUSE):
        return [*fragments, text]
    return [*fragments[:-1], _join(last, text)]


def _split_long(clause: str, max_length: int) -> list[str]:
    """An over-long clause in pieces of at most `max_length` units (CJK characters and words whole)."""
    pieces, current = [], ""
    for unit in _UNITS.findall(clause):
        if semantic_length(current) + semantic_length(unit) <= max_length:
            current += unit
            continue
        if current:
            pieces.append(current)
        current = unit
    if current:
        pieces.append(current)
    return pieces
