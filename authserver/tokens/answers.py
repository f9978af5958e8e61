"""Finished answers: the bytes sent to a device, reused while every token in them is fresh.

Keyed by who asks (the subject and the claims the policy looks at) and the exact request
body, so a device that asks again (a restart loop, a retry, a fleet hammering after a broker
restart), even with a newly issued JWT, is answered with one dict lookup once its JWT is
verified and its blocks checked. An entry names the token
keys it holds: revoking any of them drops the entry in every process (the same invalidation
events that drop L1 entries), a policy reload makes it stale by version, and it is never
served past the point where its first token is due for renewal.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

Slot = tuple[Hashable, bytes]


@dataclass(frozen=True, slots=True)
class Answer:
    """One finished answer and what it depends on."""

    body: bytes
    policy_version: str
    fresh_until_ms: int
    keys: tuple[str, ...]
    client_id: str | None


class AnswerCache:
    """A bounded map (who, body) -> Answer, with a reverse index from token keys."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        # OrderedDict: evicting the oldest is O(1); a plain dict's first item gets slower to
        # find as deletions pile up at its front.
        self._entries: OrderedDict[Slot, Answer] = OrderedDict()
        self._by_key: dict[str, set[Slot]] = {}
        # Bumped by every invalidation: an answer built across one is not kept, since the
        # tokens it was built from may be the very ones just revoked.
        self.generation = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(
        self, who: Hashable, body: bytes, policy_version: str, now_ms: float
    ) -> Answer | None:
        """The answer for this exact request, if made under this policy and still fresh."""
        answer = self._entries.get((who, body))
        if (
            answer is None
            or answer.policy_version != policy_version
            or now_ms >= answer.fresh_until_ms
        ):
            self.misses += 1
            return None
        self.hits += 1
        return answer

    def put(self, who: Hashable, body: bytes, answer: Answer, generation: int) -> None:
        """Keep `answer` built at `generation`; the oldest entry goes when full."""
        if self._maxsize <= 0 or generation != self.generation:
            return
        slot = (who, body)
        self._forget(slot)
        while len(self._entries) >= self._maxsize:
            self._unindex(*self._entries.popitem(last=False))
        self._entries[slot] = answer
        for key in answer.keys:
            self._by_key.setdefault(key, set()).add(slot)

    def _forget(self, slot: Slot) -> None:
        answer = self._entries.pop(slot, None)
        if answer is not None:
            self._unindex(slot, answer)

    def _unindex(self, slot: Slot, answer: Answer) -> None:
        for key in answer.keys:
            slots = self._by_key.get(key)
            if slots is not None:
                slots.discard(slot)
                if not slots:
                    del self._by_key[key]

    def drop(self, keys: Iterable[str]) -> None:
        """Forget every answer holding one of these token keys."""
        self.generation += 1
        for key in keys:
            for slot in list(self._by_key.get(key, ())):
                self._forget(slot)

    def clear(self) -> None:
        """Forget everything."""
        self.generation += 1
        self._entries.clear()
        self._by_key.clear()
