"""Requests below the protobuf API: raw message bytes sent as a method's request (`raw_messages`: not
UTF-8 where a string belongs, corrupt or truncated wire format, groups nested past the parser's
limit, wrong wire types), messages over the gateway's max_message_bytes (`oversize_messages`), and
raw HTTP/2 exchanges (`h2_cases` + `h2_exchange`, with the `h2` package): HEADERS for a method, then
DATA frames whose gRPC length prefix is cut short, lies, or flags compression the call never set.
"""

from __future__ import annotations

import gzip
import socket
import struct
import time
import urllib.parse
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import strategies as st

from gateway.api import pb
from tests.fuzz.fields import mostly, weighted

MIB = 1024 * 1024
# every unary-request method of bailing.v1 -> its request message class
METHODS = {
    f"/{service.full_name}/{m.name}": getattr(pb, m.input_type.name)
    for service in pb.DESCRIPTOR.services_by_name.values()
    for m in service.methods
}
CHEAP = pb.SamplingParams(max_tokens=1)
NOT_UTF8 = (b"\xff", b"\xc3\x28", b"a\x80b", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xfe\xfe")


@dataclass(frozen=True)
class RawBytes:
    """Bytes sent as a method's serialized request, as they are."""

    data: bytes
    label: str  # what was done: "not UTF-8", "truncated", ...

    def __repr__(self) -> str:
        return f"RawBytes({self.label}, {len(self.data)} bytes {self.data[:40]!r})"


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def string_paths(message, depth: int = 3) -> list[tuple[int, ...]]:
    """Field-number paths to every string field (nested messages, map entries included) to `depth`."""
    paths = []
    for f in message.DESCRIPTOR.fields if hasattr(message, "DESCRIPTOR") else message.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            paths.append((f.number,))
        elif f.type == FieldDescriptor.TYPE_MESSAGE and depth > 1:
            paths += [(f.number, *p) for p in string_paths(f.message_type, depth - 1)]
    return paths


def at_path(path: tuple[int, ...], payload: bytes) -> bytes:
    """The wire bytes setting the string at `path` to `payload` (valid UTF-8 or not)."""
    out = _delimited(path[-1], payload)
    for number in reversed(path[:-1]):
        out = _delimited(number, out)
    return out


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def base_request(request_type, model: str) -> bytes:
    """A small request of the type for `model`, that passes the gateway's checks where it can."""
    fields = {"model": model, "prompt": "hello", "text": "hi", "id": "batch_x", "sampling": CHEAP}
    names = {f.name for f in request_type.DESCRIPTOR.fields}
    return request_type(**{k: v for k, v in fields.items() if k in names}).SerializeToString()


@st.composite
def raw_messages(draw, model: str) -> tuple[str, RawBytes]:
    """(method path, bytes) for a request that does not parse, or parses against the odds."""
    method = draw(st.sampled_from(sorted(METHODS)))
    request_type = METHODS[method]
    base = base_request(request_type, model)
    kind = draw(st.sampled_from(("not UTF-8", "not UTF-8", "truncated", "junk", "deep groups", "wire type")))
    paths = string_paths(request_type)
    if kind == "not UTF-8" and paths:
        bad = draw(st.one_of(st.sampled_from(NOT_UTF8), st.binary(min_size=1, max_size=8).filter(_not_utf8)))
        data = base + at_path(draw(st.sampled_from(paths)), draw(st.binary(max_size=4)) + bad)
    elif kind == "truncated" and len(base) > 1:
        data = base[: draw(st.integers(1, len(base) - 1))]
    elif kind == "deep groups":
        depth = draw(st.sampled_from((50, 101, 5000)))
        data = base + _key(99, 3) * depth + _key(99, 4) * depth
    elif kind == "wire type":
        number = draw(st.sampled_from([f.number for f in request_type.DESCRIPTOR.fields] or [1]))
        data = base + _key(number, draw(st.sampled_from((0, 1, 5, 6, 7)))) + draw(st.binary(max_size=9))
    else:
        kind, data = "junk", draw(st.binary(min_size=1, max_size=256))
    return method, RawBytes(data, kind)


def oversize_messages(max_message_bytes: int, model: str) -> st.SearchStrategy[pb.GenerateRequest]:
    """A GenerateRequest a little over `max_message_bytes` (its prompt), or a media part that is."""
    over = st.integers(max_message_bytes + 1, max_message_bytes + MIB)

    def build(size: int, as_media: bool) -> pb.GenerateRequest:
        if as_media:
            part = pb.ContentPart(
                image=pb.Media(data=b"\x89PNG\r\n\x1a\n" + bytes(size), mime_type="image/png")
            )
            return pb.GenerateRequest(model=model, messages=[pb.Message(role="user", content=[part])])
        return pb.GenerateRequest(model=model, prompt="a" * size)

    return st.builds(build, over, st.booleans())


# ---- raw HTTP/2 ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class H2Case:
    path: str
    headers: tuple[tuple[str, str], ...]  # besides :method/:scheme/:path/:authority/te
    frames: tuple[bytes, ...]  # DATA frame payloads, in order
    end_stream: bool  # the last frame (or the HEADERS) half-closes the call
    label: str

    def __repr__(self) -> str:
        sizes = [len(f) for f in self.frames]
        return f"H2Case({self.label}, {self.path}, {self.headers}, frames {sizes}, end={self.end_stream})"


def grpc_frame(payload: bytes, declared: int | None = None, flag: int = 0) -> bytes:
    """A gRPC message frame: flag byte, big-endian 4-byte length (`declared` may lie), payload."""
    length = len(payload) if declared is None else declared
    return bytes([flag]) + struct.pack(">I", length & 0xFFFFFFFF) + payload


H2_KINDS = ("message", "cut prefix", "short", "long", "huge length", "compressed", "flags", "two", "none")
H2_KINDS += ("split", "junk")
CONTENT_TYPES = ("application/grpc",) * 5 + ("application/grpc+proto", "text/plain", "")
ENCODINGS = (None,) * 6 + ("gzip", "identity", "zzz")


@st.composite
def _frames(draw, kind: str, payload: bytes, encoding: str | None) -> list[bytes]:
    whole = grpc_frame(payload)
    if kind == "cut prefix":
        return [whole[: draw(st.integers(0, 4))]]
    if kind == "short":  # the prefix promises more bytes than follow
        return [grpc_frame(payload, len(payload) + draw(st.integers(1, 1000)))]
    if kind == "long":  # fewer: the rest reads as the start of a second message
        return [grpc_frame(payload, max(0, len(payload) - draw(st.integers(1, 4))))]
    if kind == "huge length":
        return [grpc_frame(payload, draw(st.sampled_from((33 * MIB, 2**31, 2**32 - 1))))]
    if kind == "compressed":  # really gzipped when the call says gzip; else a flag that lies
        return [grpc_frame(gzip.compress(payload) if encoding == "gzip" else payload, flag=1)]
    if kind == "flags":
        return [grpc_frame(payload, flag=draw(st.integers(2, 255)))]
    if kind == "split":
        return [whole[:3], whole[3:]]
    if kind == "junk":
        return [draw(st.binary(min_size=1, max_size=64))]
    return {"message": [whole], "two": [whole, whole], "none": []}[kind]


@st.composite
def h2_cases(draw, model: str) -> H2Case:
    unknown = st.sampled_from(("/bailing.v1.Inference/Nope", "/"))
    path = draw(mostly(st.sampled_from(sorted(METHODS)), unknown, odds=9))
    kind = draw(weighted(dict.fromkeys(H2_KINDS, 1)))
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    encoding = draw(st.sampled_from(ENCODINGS))
    headers = [("content-type", content_type)] if content_type else []
    if encoding:
        headers.append(("grpc-encoding", encoding))
    end_stream = draw(st.integers(0, 9)) > 0
    if not end_stream or draw(st.integers(0, 3)) == 0:  # a call left open can only end by its deadline
        headers.append(("grpc-timeout", draw(st.sampled_from(("2S", "500m", "1S")))))
    payload = base_request(METHODS.get(path, pb.GenerateRequest), model)
    frames = draw(_frames(kind, payload, encoding))
    return H2Case(path, tuple(headers), tuple(frames), end_stream, kind)


@dataclass
class H2Answer:
    status: str = ""  # grpc-status as a code name; "" = none came
    message: str = ""
    http_status: str = ""
    reset: int | None = None  # RST_STREAM error code
    goaway: bool = False
    timed_out: bool = False
    headers: dict = field(default_factory=dict)


def h2_exchange(address: str, case: H2Case, timeout_s: float = 15.0) -> H2Answer:
    """Send `case` on a fresh connection; the gRPC status (or how the connection ended) that came back."""
    host, port = address.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    answer = H2Answer()
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        pseudo = [(":method", "POST"), (":scheme", "http"), (":path", case.path), (":authority", address)]
        headers = [*pseudo, ("te", "trailers"), *case.headers]
        conn.send_headers(sid, headers, end_stream=case.end_stream and not case.frames)
        for i, frame in enumerate(case.frames):
            conn.send_data(sid, frame, end_stream=case.end_stream and i == len(case.frames) - 1)
        sock.sendall(conn.data_to_send())
        sock.settimeout(0.5)
        until = time.monotonic() + timeout_s
        while not _read(sock, conn, sid, answer):
            if time.monotonic() > until:
                answer.timed_out = True
                break
    return answer


def _read(sock: socket.socket, conn: h2.connection.H2Connection, sid: int, answer: H2Answer) -> bool:
    """Read what arrived into `answer`; True once the stream (or connection) ended."""
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return False
    if not data:
        answer.goaway = True
        return True
    done = False
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            answer.headers.update(dict(event.headers))
            answer.http_status = answer.headers.get(":status", "")
            if "grpc-status" in answer.headers:
                answer.status = _code_name(answer.headers["grpc-status"])
                answer.message = urllib.parse.unquote(answer.headers.get("grpc-message", ""))
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
            answer.reset, done = int(event.error_code), True
        elif isinstance(event, h2.events.ConnectionTerminated):
            answer.goaway, done = True, True
        if isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
            done = True
    sock.sendall(conn.data_to_send())
    return done


def _code_name(value: str) -> str:
    import grpc

    codes = {c.value[0]: c.name for c in grpc.StatusCode}
    return codes.get(int(value), f"status {value}") if value.isdigit() else f"status {value!r}"
