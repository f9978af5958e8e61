"""A bounded map, by entries and by bytes, whose entries may stop at a time they carry.

Every cache that holds one entry per device (the verifier's JWTs, the policy's plans, the
token service's L1, the in-process store) is one of these, so that each is bounded the same
way: by a count and by an estimate of the bytes its entries hold, the oldest going first.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

EXPIRED_PER_PUT = 2


def weigh_str(value: str) -> int:
    """A string's bytes. CPython keeps every character at the width of its widest one: one
    byte for ASCII (the usual case, and `isascii` is a flag read), up to four, so a device
    whose claim values are emoji would otherwise hold four times what it is counted at."""
    return 40 + len(value) if value.isascii() else sys.getsizeof(value)


def weight(value: object) -> int:
    """Roughly the bytes a value holds: strings by size, bytes by length, containers by items.

    An estimate for the byte bounds, close to tracemalloc's figures for the small values
    caches hold (a short string 50 bytes, a tuple 40 and 8 a slot, a number 32).
    """
    # Exact classes first, the common case (claims, keys): an isinstance against a union or
    # an ABC costs more than the rest of the estimate.
    cls = type(value)
    if cls is str or isinstance(value, str):
        return weigh_str(value)  # type: ignore[arg-type]
    if cls is int or cls is float:
        return 32
    if value is None or value is True or value is False:
        return 0  # one object the whole process shares
    if isinstance(value, bytes):
        return 40 + len(value)
    if isinstance(value, tuple | list | frozenset | set):
        return 40 + sum([8 + weight(item) for item in value])
    if isinstance(value, Mapping):
        return 64 + sum([16 + weight(item) for item in value.values()])
    return 32


def _never(_value: object) -> float:
    return float("inf")


def _nothing(_key: object, _value: object) -> int:
    return 0


class ExpiringMap(Generic[K, V]):
    """Insertion-ordered, evicts the oldest when full; an entry is gone once `until(v) <= now`.

    Full is `maxsize` entries or, with `weigh`, `max_bytes` of what `weigh(key, value)` says
    each entry holds (a pure function of the entry, asked again when it leaves, so no size
    is stored beside it: the entries are immutable records): an entry that alone weighs more than
    `max_bytes` is not kept, and the oldest entries go until the new one fits, so the map
    never holds more. `touch=True` moves an entry found by `get` to the young end (LRU).

    Lighter than cachetools' TLRUCache on the hot path: a hit is one dict lookup and one
    comparison, with no timer call and no heap upkeep. Expired entries are dropped when met,
    and each `put` given `now` drops up to EXPIRED_PER_PUT expired ones from the oldest end:
    an entry nobody asks for again (a device that left, a renewed JWT) must not stay until the
    map is full, or the memory held follows every key ever seen instead of the live ones.
    """

    def __init__(
        self,
        maxsize: int,
        until: Callable[[V], float] = _never,
        on_drop: Callable[[K, V], None] | None = None,
        *,
        max_bytes: int | None = None,
        weigh: Callable[[K, V], int] = _nothing,
        touch: bool = False,
    ) -> None:
        self._maxsize = maxsize
        self._until = until
        self._on_drop = on_drop  # told of entries evicted or expired (not of pop/clear)
        self._max_bytes = max_bytes
        self._weigh = weigh
        self._touch = touch
        self._data: OrderedDict[K, V] = OrderedDict()
        self.bytes = 0  # what the entries hold, by `weigh`, when bytes are bounded

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, now: float) -> V | None:
        """The live value under `key`, or None."""
        value = self._data.get(key)
        if value is None:
            return None
        if self._until(value) <= now:
            self._remove(key)
            if self._on_drop is not None:
                self._on_drop(key, value)
            return None
        if self._touch:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V, now: float | None = None) -> bool:
        """Keep `value` (the oldest entries go to make room); False when it is not kept.

        With `now`, expired entries at the oldest end go first (see the class docstring).
        """
        if self._maxsize <= 0:
            return False
        self._remove(key)
        if now is not None:
            self._drop_expired(now)
        size = 0
        limit = self._max_bytes
        if limit is not None:
            size = self._weigh(key, value)
            if size > limit:
                return False
        data = self._data
        while data and (
            len(data) >= self._maxsize or (limit is not None and self.bytes + size > limit)
        ):
            old_key, old_value = data.popitem(last=False)
            if limit is not None:
                self.bytes -= self._weigh(old_key, old_value)
            if self._on_drop is not None:
                self._on_drop(old_key, old_value)
        data[key] = value
        self.bytes += size
        return True

    def _drop_expired(self, now: float) -> None:
        # More than one a put, so the expired ones are reclaimed faster than keys arrive; the
        # first live entry stops it (insertion order is close to expiry order, not equal).
        data = self._data
        for _ in range(EXPIRED_PER_PUT):
            if not data:
                return
            key = next(iter(data))
            value = data[key]
            if self._until(value) > now:
                return
            self._remove(key)
            if self._on_drop is not None:
                self._on_drop(key, value)

    def _remove(self, key: K) -> V | None:
        value = self._data.pop(key, None)
        if value is not None and self._max_bytes is not None:
            self.bytes -= self._weigh(key, value)
        return value

    def pop(self, key: K) -> V | None:
        """Remove and return the value under `key` (live or not)."""
        return self._remove(key)

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()
        self.bytes = 0

    def items(self, now: float) -> Iterator[tuple[K, V]]:
        """Live entries (a snapshot, safe to modify the map meanwhile)."""
        for key, value in list(self._data.items()):
            if self._until(value) > now:
                yield key, value
