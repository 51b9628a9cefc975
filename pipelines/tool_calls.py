"""Tool calls out of a reply's answer text, as it streams: `<tool_call>\\n{json}\\n</tool_call>` blocks.

`ToolCallParser.feed(delta)` returns the content text it can release and the calls completed so
far; text that could still become an opening tag is held back until it cannot. A block whose body is
not a JSON object with a string "name" and an object "arguments" is not a call: its text goes to the
content unchanged (so nothing the model wrote is lost). Whitespace before the first content and
around calls is held back: it is content only if real text follows or the reply has no call.
`finish()` releases what is held (an unclosed block is content).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from models.family import ToolCallTags
from pipelines.reasoning import partial_suffix_len
from pipelines.structured_spec import ToolCall


@dataclass
class Parsed:
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolCallParser:
    def __init__(self, tags: ToolCallTags) -> None:
        self.tags = tags
        self.calls: list[ToolCall] = []
        self._held = ""  # text that may start an opening tag, or a block still open
        self._in_block = False
        self._space = ""  # whitespace held back (content only if real text follows, or no call came)
        self._emitted = False  # whether any content was released

    def feed(self, delta: str) -> Parsed:
        out = Parsed()
        buf, self._held = self._held + delta, ""
        while buf:
            if self._in_block:
                end = buf.find(self.tags.close)
                if end < 0:
                    self._held = buf
                    break
                self._block(buf[:end], out)
                buf = buf[end + len(self.tags.close) :]
                self._in_block = False
                continue
            start = buf.find(self.tags.open)
            if start < 0:
                keep = partial_suffix_len(buf, self.tags.open)
                self._content(buf[: len(buf) - keep], out)
                self._held = buf[len(buf) - keep :]
                break
            self._content(buf[:start], out)
            buf = buf[start + len(self.tags.open) :]
            self._in_block = True
        return out

    def finish(self) -> Parsed:
        """End of the reply: what is held back becomes content (an unclosed block with its tag)."""
        out = Parsed()
        held, self._held = self._held, ""
        if self._in_block:
            held = self.tags.open + held
            self._in_block = False
        self._content(held, out)
        if not self.calls:
            out.content, self._space = out.content + self._space, ""
        return out

    def _content(self, text: str, out: Parsed) -> None:
        if not text:
            return
        if not text.strip() and (self.calls or not self._emitted):
            self._space += text  # around calls, whitespace is layout, not content
            return
        out.content += self._space + text
        self._space, self._emitted = "", True

    def _block(self, body: str, out: Parsed) -> None:
        call = _call(body, len(self.calls))
        if call is None:
            self._content(self.tags.open + body + self.tags.close, out)
            return
        self.calls.append(call)
        out.calls.append(call)
        self._space = ""


def _call(body: str, index: int) -> ToolCall | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    args = data.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(new_call_id(), data["name"], json.dumps(args, ensure_ascii=False), index)
