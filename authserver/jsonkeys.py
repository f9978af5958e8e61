"""JSON objects that name a member twice: refused wherever the gateway reads JSON from outside.

RFC 8259 leaves a repeated name's meaning to the parser: Python's json and msgspec keep the
last, other parsers (a WAF, a proxy, the token's issuer) the first, so one text is read two
ways. `json.loads(text, object_pairs_hook=unique_members)` raises `RepeatedKey` instead.
"""

from __future__ import annotations

from typing import Any


class RepeatedKey(Exception):
    """A JSON object names `key` more than once."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json.loads: the object, or RepeatedKey naming the first repeat."""
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return members
