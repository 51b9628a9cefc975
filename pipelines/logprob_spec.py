"""Per-token log-probabilities as they travel from a worker to the gateway (torch-free).

A `TokenLogprob` is one sampled answer token: its logprob under the model's raw logits and the top
alternatives at its position (`TopLogprob`s, most likely first), each with its text and exact bytes.
In a stream event they are JSON (`logprobs_to_json` / `logprobs_from_json`); the bytes are written only
where they are not the UTF-8 of the text (a piece of a multi-byte character), as hex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TopLogprob:
    """A token the model ranked at one position, with its log-probability."""

    token_id: int
    token: str  # the token decoded alone (U+FFFD where it is part of a multi-byte character)
    logprob: float
    bytes: bytes  # the token's exact bytes

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"token_id": self.token_id, "token": self.token, "logprob": self.logprob}
        if self.bytes != self.token.encode():
            out["bytes"] = self.bytes.hex()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TopLogprob:
        token = data["token"]
        raw = bytes.fromhex(data["bytes"]) if "bytes" in data else token.encode()
        return cls(data["token_id"], token, data["logprob"], raw)


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token of the answer: its log-probability and the top alternatives at its position."""

    token_id: int
    token: str
    logprob: float
    bytes: bytes
    top: tuple[TopLogprob, ...] = ()  # most likely first; the sampled token is among them if it ranked

    def to_json(self) -> dict[str, Any]:
        out = TopLogprob(self.token_id, self.token, self.logprob, self.bytes).to_json()
        if self.top:
            out["top"] = [t.to_json() for t in self.top]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenLogprob:
        head = TopLogprob.from_json(data)
        top = tuple(TopLogprob.from_json(t) for t in data.get("top", ()))
        return cls(head.token_id, head.token, head.logprob, head.bytes, top)


def logprobs_to_json(items: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    return [t.to_json() for t in items]


def logprobs_from_json(items: list[dict[str, Any]]) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob.from_json(t) for t in items)
