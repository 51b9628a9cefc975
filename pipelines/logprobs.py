"""Engine logprob dicts -> the `TokenLogprob`s of one choice's answer tokens, with their text and bytes.

The engine gives one dict per generated token: {top-k ids in rank order: lp, then the sampled id if
not among them} (engine/sampler.py). `LogprobReader` turns them into `TokenLogprob`s in output order,
each as soon as it is known to be an answer token: at once without a reasoning block; with one, once
the `ReasoningTracker` knows where the answer starts. Reasoning tokens get none (OpenAI returns
logprobs for the content only); see `ReasoningTracker.answer_tokens` for the tokens at the boundary.
Nor does the token that ended the output when it was an EOS or stop token id (it adds no text), so
without reasoning and stop strings the tokens' texts concatenate to the answer. `TokenTexts` gives a
token's text (the id decoded alone) and exact bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import decoders

from engine.outputs import RequestOutput
from pipelines.logprob_spec import TokenLogprob, TopLogprob
from pipelines.reasoning import ReasoningTracker


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable character that stands for each byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF = _byte_level_alphabet()


class TokenTexts:
    """Token id -> (text, bytes) under one tokenizer, cached (one request's).

    The text is the id decoded alone (special tokens kept); the bytes are exact for a vocabulary token
    of a byte-level BPE tokenizer (also when it holds only part of a multi-byte character, whose text
    is U+FFFD), else the text's UTF-8 (added tokens, other kinds of tokenizer).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._byte_level = isinstance(getattr(backend, "decoder", None), decoders.ByteLevel)
        self._added = set(getattr(tokenizer, "added_tokens_decoder", None) or ())
        self._cache: dict[int, tuple[str, bytes]] = {}

    def get(self, token_id: int) -> tuple[str, bytes]:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._read(token_id)
        return hit

    def _read(self, token_id: int) -> tuple[str, bytes]:
        if self.tokenizer is None:
            return "", b""
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        if not self._byte_level or token_id in self._added:
            return text, text.encode()
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece and all(c in _BYTE_OF for c in piece):
            return text, bytes(_BYTE_OF[c] for c in piece)
        return text, text.encode()


class LogprobReader:
    """One choice's logprobs, released token by token once each is known to be an answer token."""

    def __init__(self, texts: TokenTexts, top_n: int) -> None:
        self.texts, self.top_n = texts, top_n
        self._done = 0  # output tokens decided so far (released or skipped)

    def take(self, out: RequestOutput, tracker: ReasoningTracker | None) -> tuple[TokenLogprob, ...]:
        """The logprobs of the answer tokens of `out` (one choice's output so far) decided since the
        last call; `tracker`: the choice's, already updated with `out` (None: no reasoning block)."""
        lps = out.logprobs or []
        total = min(len(out.token_ids), len(lps))
        if tracker is None:
            picked: Sequence[int] = range(self._done, total)
        else:
            answer = tracker.answer_tokens(self._done, out.finished)
            if answer is None:
                return ()
            picked = answer
        self._done = total
        if out.finish_reason == "stop" and isinstance(out.stop_reason, int):
            total -= 1  # the EOS / stop token id that ended it
        return tuple(self._entry(out.token_ids[i], lps[i]) for i in picked if i < total)

    def _entry(self, token_id: int, entry: Mapping[int, float]) -> TokenLogprob:
        top = tuple(self._top(alt, lp) for alt, lp in itertools.islice(entry.items(), self.top_n))
        head = self._top(token_id, entry[token_id])
        return TokenLogprob(head.token_id, head.token, head.logprob, head.bytes, top)

    def _top(self, token_id: int, lp: float) -> TopLogprob:
        text, raw = self.texts.get(token_id)
        return TopLogprob(token_id, text, lp, raw)
