"""A bounded map whose entries stop being served at a time they carry themselves."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

EXPIRED_PER_PUT = 2


class ExpiringMap(Generic[K, V]):
    """Insertion-ordered, evicts the oldest when full; an entry is gone once `until(v) <= now`.

    Lighter than cachetools' TLRUCache on the hot path: a hit is one dict lookup and one
    comparison, with no timer call and no heap upkeep. Expired entries are dropped when met,
    and each `put` drops up to EXPIRED_PER_PUT expired ones from the oldest end: an entry
    nobody asks for again (a device that left) must not stay until the map is full, or the
    memory held follows every key ever seen instead of the live ones.
    """

    def __init__(
        self,
        maxsize: int,
        until: Callable[[V], float],
        on_drop: Callable[[K, V], None] | None = None,
    ) -> None:
        self._maxsize = maxsize
        self._until = until
        self._on_drop = on_drop  # told of entries evicted or expired (not of pop/clear)
        self._data: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, now: float) -> V | None:
        """The live value under `key`, or None."""
        value = self._data.get(key)
        if value is None:
            return None
        if self._until(value) <= now:
            del self._data[key]
            if self._on_drop is not None:
                self._on_drop(key, value)
            return None
        return value

    def put(self, key: K, value: V, now: float) -> None:
        """Keep `value`; expired entries at the oldest end go, and the oldest one when full."""
        if self._maxsize <= 0:
            return
        self._data.pop(key, None)
        self._drop_expired(now)
        while len(self._data) >= self._maxsize:
            old_key, old_value = self._data.popitem(last=False)
            if self._on_drop is not None:
                self._on_drop(old_key, old_value)
        self._data[key] = value

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
            del data[key]
            if self._on_drop is not None:
                self._on_drop(key, value)

    def pop(self, key: K) -> V | None:
        """Remove and return the value under `key` (live or not)."""
        return self._data.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()

    def items(self, now: float) -> Iterator[tuple[K, V]]:
        """Live entries (a snapshot, safe to modify the map meanwhile)."""
        for key, value in list(self._data.items()):
            if self._until(value) > now:
                yield key, value
