"""Client input quoted back in an error, cut short.

An error that names the field is useful; one that echoes the input whole is an amplifier (a bad
5 MB body came back as a 28 MB 422, and FastAPI spent seconds encoding it on the event loop).
Every 4xx that quotes input quotes `excerpt(input)`: at most EXCERPT_CHARS characters of it,
rendered without walking more of the input than it shows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

EXCERPT_CHARS = 120
ELLIPSIS = "…"
_DEPTH = 6  # deeper containers are shown as "…": the excerpt is short anyway
_MAX_INT_BITS = 64  # a JSON integer of 5,000 digits has no str() (Python's digit limit)


def cut(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text`, or its first `limit` characters and an ellipsis."""
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> Any:
    """A JSON-safe stand-in for `value`: the value itself when its JSON is short, else the
    first `limit` characters of its JSON text (a string ending in an ellipsis)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN
    if isinstance(value, int):
        return value if value.bit_length() <= _MAX_INT_BITS else f"a {value.bit_length()}-bit int"
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: limit * 4]).decode(errors="replace")
    if isinstance(value, str):
        return cut(value, limit)
    text, whole = _bounded_json(value, limit)
    if whole:
        return json.loads(text)  # short and complete: the value itself, JSON-safe
    return cut(text, limit)


def _bounded_json(value: Any, limit: int) -> tuple[str, bool]:
    """The JSON text of `value` up to a little past `limit` characters, and whether it is all."""
    parts: list[str] = []
    size = 0
    for piece in _pieces(value, 0):
        parts.append(piece)
        size += len(piece)
        if size > limit:
            return "".join(parts), False
    return "".join(parts), True


def _pieces(value: Any, depth: int) -> Iterator[str]:
    """JSON text in small pieces, lazily: the caller stops when it has enough."""
    if isinstance(value, dict):
        if depth >= _DEPTH:
            yield '"…"'
            return
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield (", " if i else "") + json.dumps(cut(str(key))) + ": "
            yield from _pieces(item, depth + 1)
        yield "}"
    elif isinstance(value, list | tuple):
        if depth >= _DEPTH:
            yield '"…"'
            return
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ", "
            yield from _pieces(item, depth + 1)
        yield "]"
    else:
        short = excerpt(value) if isinstance(value, str | bytes | int | float) else value
        try:
            yield json.dumps(short, allow_nan=False)
        except (TypeError, ValueError):  # not JSON: a datetime, an exception, inf
            yield json.dumps(cut(str(short)))
