"""Reading a JSON request body field by field: each value checked for its JSON type, every problem a 400
naming the field by its OpenAI path (`messages[2].content[0].image_url.url`).

The values' ranges and meaning are checked once, by the gRPC request's validation the HTTP call goes
through afterwards (gateway/convert.py); here only what JSON itself cannot say about the shape.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.http_api.errors import bad_request

_JSON_TYPES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
}


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (400 unless it is one)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_kind(body)}")
    return body


class Fields:
    """A JSON object's fields, read with their types checked; `path` prefixes the names in errors."""

    def __init__(self, obj: Any, path: str = "") -> None:
        if not isinstance(obj, dict):
            raise bad_request(f"{path or 'the body'} must be an object, got {_kind(obj)}", path or None)
        self.obj, self.path = obj, path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, *types: type, default: Any = None) -> Any:
        """The value at `key` if it has one of `types` (an int counts as a number); `default` if absent
        or null."""
        value = self.obj.get(key)
        if value is None:
            return default
        if not _has_type(value, types):
            wanted = " or ".join(_JSON_TYPES[t] for t in types)
            raise bad_request(f"{self.name(key)} must be {wanted}, got {_kind(value)}", self.name(key))
        return value

    def require(self, key: str, *types: type) -> Any:
        value = self.get(key, *types)
        if value is None:
            raise bad_request(f"{self.name(key)} is required", self.name(key))
        return value

    def sub(self, key: str) -> Fields | None:
        """The object at `key` as Fields, or None if absent."""
        value = self.get(key, dict)
        return None if value is None else Fields(value, self.name(key))

    def refuse(self, *keys: str, why: str = "is not supported") -> None:
        """400 for the first of `keys` that is set (fields this server does not implement)."""
        for key in keys:
            if self.obj.get(key) not in (None, False):
                raise bad_request(f"{self.name(key)} {why}", self.name(key))


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and (int in types or float in types):
        return True
    if isinstance(value, float) and float in types:
        return True
    return any(isinstance(value, t) for t in types if t not in (int, float, bool))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for t, name in _JSON_TYPES.items():
        if isinstance(value, t):
            return name
    return type(value).__name__
