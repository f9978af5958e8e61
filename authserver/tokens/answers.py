"""Finished answers: the bytes sent to a device, reused while every token in them is fresh.

Keyed by who asks (the subject and the claims the policy looks at) and the canonical
request (the parsed body with its lists sorted and its lifetime settled, so two spellings
of one request share an entry), so a device that asks again (a restart loop, a retry, a
fleet hammering after a broker restart), even with a newly issued JWT, is answered with one
dict lookup once its JWT is verified and its blocks checked. An entry names the token
keys it holds: revoking any of them drops the entry in every process (the same invalidation
events that drop L1 entries), a policy reload makes it stale by version, and it is never
served past the point where its first token is due for renewal.

In front of it, for the commonest request of all (a device repeating a request with the JWT
it sent before), `repeats` maps the exact Authorization header and body bytes (by a 16-byte
keyed digest of them, not the strings themselves) to the answer and identity they got: one
digest and one dict lookup instead of verifying the token, parsing the body, keying its
claims and finding the answer. `repeat` re-checks what can change: the answer is still
held (`Answer.live`, unset when it is dropped, replaced or evicted, and its repeats go with
it), its policy version and freshness, the JWT's expiry and the verifier's key epoch; the
caller applies the revocation blocks, which answer with errors.

Both maps are bounded by entries and, together, by bytes (`max_bytes`, an estimate of what
each entry holds: its body, key and bookkeeping). Answers come first: an answer that does
not fit evicts the oldest answers (and the repeats pointing at them), a repeat that does
not fit evicts the oldest repeats only, or is not kept. Every eviction goes through one
path that unindexes the answer and ends its repeats, so no map is left pointing at what
another let go of.

The maps only: what fills them and what drops them is decided by the token path's owner,
`tokens/issuer.py`, whose docstring has the invalidation table.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import blake2b

from authserver.bounded import weight
from authserver.identity.model import Identity

Slot = tuple[Hashable, Hashable]
# What a request was sent as: its Authorization header and body.
RepeatKey = tuple[str, bytes]
# What the repeats are keyed by: a keyed blake2b digest of both. The header itself (a JWT of
# a few hundred bytes, a fresh string per request) as the key cost about 170 bytes a token
# more; the digest costs a repeat hit about 0.5 us (bench/repeat_key.py). Its key is this
# process's own, so no one can search offline for a header and body that collide with another
# device's, and 128 bits leave nothing to find online.
RepeatDigest = bytes
# How many body spellings of one answer one JWT may have remembered.
REPEAT_SPELLINGS = 2
# Headers and bodies longer than these take the cached path (nor are they hashed).
REPEAT_MAX_HEADER = 1024
REPEAT_MAX_BODY = 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Answers past their freshness let go from the oldest end each time one is kept.
EXPIRED_PER_PUT = 2
# What an entry costs beyond its own bytes (measured with tracemalloc: the OrderedDict slot,
# the Answer or Repeat object, its tuples and list, the reverse index entries).
ANSWER_OVERHEAD = 400
# Distinct canonical requests kept as one object each; past this the sharing starts over.
REQUESTS_SHARED = 1024
REPEAT_OVERHEAD = 250  # a repeat holds nothing of its own size: its key is a digest


def answer_body(document: bytes) -> bytes:
    """A serialised answer as it is kept: a copy of exactly its length.

    orjson hands back its working buffer, several kilobytes for an answer of under one (4.1 KB
    of RSS for an 858-byte body, measured): kept for every cached answer, that slack was a third
    of the gateway's memory per token.
    """
    return memoryview(document).tobytes()


@dataclass(slots=True, eq=False)
class Answer:
    """One finished answer and what it depends on; `live` while the cache holds it."""

    body: bytes
    policy_version: str
    fresh_until_ms: int
    keys: tuple[str, ...]
    client_id: str | None
    live: bool = False
    # The repeats that point here, so they go when the answer does: a tuple (none is the
    # shared empty one, one is 48 bytes where a list was 88), replaced when it changes.
    repeat_keys: tuple[RepeatDigest, ...] = ()


@dataclass(slots=True, eq=False)
class Repeat:
    """What a request with this exact Authorization header and body was answered."""

    answer: Answer
    identity: Identity
    verifier_epoch: int


def answer_size(slot: Slot, answer: Answer) -> int:
    """What an answer held under `slot` counts for in the byte bound.

    Worked out again when it leaves rather than kept beside it (an int a token): both are
    immutable once held.
    """
    return (
        ANSWER_OVERHEAD
        + len(answer.body)
        + weight(slot)
        + sum([56 + len(key) for key in answer.keys])
    )


class AnswerCache:
    """A bounded map (who, canonical request) -> Answer, with a reverse index from token keys."""

    def __init__(self, maxsize: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        # What answers and repeats hold together, by the estimate in `weight`.
        self.bytes = 0
        # OrderedDict: evicting the oldest is O(1); a plain dict's first item gets slower to
        # find as deletions pile up at its front.
        self._entries: OrderedDict[Slot, Answer] = OrderedDict()
        # Token key -> the slot of the answer holding it, or a list of slots when several do:
        # nearly always one (a list of one costs 64 bytes more, a set 200: 20,000 answers
        # hold 40,000 keys).
        self._by_key: dict[str, Slot | list[Slot]] = {}
        # digest(Authorization header, body) -> Repeat; at most `maxsize`, oldest first out.
        self._repeats: OrderedDict[RepeatDigest, Repeat] = OrderedDict()
        self._digest = blake2b(key=secrets.token_bytes(32), digest_size=16)
        self._bodyless = self._digest.copy()
        self._bodyless.update(bytes(4))
        # Requests being worked out (not answered from here) -> how many at once.
        self._working: dict[Slot, int] = {}
        # One object per distinct canonical request: most devices ask the same (a bodyless
        # request is the policy's defaults), and every answer holds its request.
        self._requests: dict[Hashable, Hashable] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def repeats(self) -> int:
        """How many (Authorization header, body) pairs are remembered as repeats."""
        return len(self._repeats)

    def fresh(
        self, who: Hashable, request: Hashable, policy_version: str, now_ms: float
    ) -> Answer | None:
        """The answer for this request, if made under this policy and still fresh.

        `request` is the canonical request: equal only for requests that get equal answers.
        """
        answer = self._entries.get((who, request))
        if (
            answer is None
            or answer.policy_version != policy_version
            or now_ms >= answer.fresh_until_ms
        ):
            self.misses += 1
            return None
        self.hits += 1
        return answer

    @contextmanager
    def working(self, who: Hashable, request: Hashable) -> Iterator[bool]:
        """Mark a request as being worked out; yields whether no identical one already is.

        What the per-subject request limit counts: identical requests in flight together
        (a fleet sharing an identity, asking at once) are one piece of work, whose tokens
        the token service mints once.
        """
        slot = (who, request)
        working = self._working
        ahead = working.get(slot, 0)
        working[slot] = ahead + 1
        try:
            yield ahead == 0
        finally:
            left = working[slot] - 1
            if left:
                working[slot] = left
            else:
                del working[slot]

    def repeat(
        self, authorization: str, body: bytes, policy_version: str, now: float, verifier_epoch: int
    ) -> Repeat | None:
        """The answer a request with this header and body got, if everything still holds.

        Held and fresh under this policy, its JWT unexpired (`now` in seconds) and its key
        still trusted (`verifier_epoch` unchanged). The caller still applies the revocation
        blocks, which answer with errors of their own.
        """
        if len(authorization) > REPEAT_MAX_HEADER or len(body) > REPEAT_MAX_BODY:
            return None
        key = self.repeat_key(authorization, body)
        repeat = self._repeats.get(key)
        if repeat is None:
            return None
        answer = repeat.answer
        if (
            answer.live
            and answer.policy_version == policy_version
            and now * 1000 < answer.fresh_until_ms
            and now < repeat.identity.expires_at
            and repeat.verifier_epoch == verifier_epoch
        ):
            self.hits += 1
            return repeat
        self._drop_repeat(key)
        return None

    def repeat_key(self, authorization: str, body: bytes) -> RepeatDigest:
        """What a request sent with this header and body is remembered under."""
        # The body's length first, so no header and body spell another pair's bytes; keyed
        # once, and with the commonest length (none) already hashed: a copy is half the cost
        # of a new hasher, and each call saved is a tenth of a microsecond.
        if body:
            hasher = self._digest.copy()
            hasher.update(len(body).to_bytes(4, "big") + body)
        else:
            hasher = self._bodyless.copy()
        hasher.update(authorization.encode("utf-8", "surrogatepass"))
        return hasher.digest()

    def remember_repeat(self, authorization: str, body: bytes, repeat: Repeat) -> None:
        """Answer the next request with this exact header and body from `repeat`.

        Headers longer than REPEAT_MAX_HEADER and bodies longer than REPEAT_MAX_BODY are
        not kept (nor hashed, on the way in or out).
        """
        answer = repeat.answer
        if (
            self._maxsize <= 0
            or not answer.live
            or len(authorization) > REPEAT_MAX_HEADER
            or len(body) > REPEAT_MAX_BODY
        ):
            return
        key = self.repeat_key(authorization, body)
        repeats = self._repeats
        if key not in repeats:
            # One JWT gets at most REPEAT_SPELLINGS repeats of one answer: a device sends one
            # spelling of its body, and a device sending ever-new spellings (spaces, key order)
            # of the same request must not push every other device's repeats out. The
            # answer's list of repeats is trimmed to the live ones on the way.
            live = []
            spellings = 0
            jwt = repeat.identity.fingerprint
            for k in answer.repeat_keys:
                held = repeats.get(k)
                if held is not None and held.answer is answer:
                    live.append(k)
                    spellings += held.identity.fingerprint == jwt
            answer.repeat_keys = tuple(live)
            if spellings >= REPEAT_SPELLINGS:
                return
        self._drop_repeat(key)
        size = REPEAT_OVERHEAD
        while repeats and (len(repeats) >= self._maxsize or self.bytes + size > self._max_bytes):
            self._drop_repeat(next(iter(repeats)))
        if self.bytes + size > self._max_bytes:
            return  # the answers fill the budget: they come first
        repeats[key] = repeat
        self.bytes += size
        if key not in answer.repeat_keys:
            answer.repeat_keys += (key,)

    def _drop_repeat(self, key: RepeatDigest) -> None:
        if self._repeats.pop(key, None) is not None:
            self.bytes -= REPEAT_OVERHEAD

    def put(
        self, who: Hashable, request: Hashable, answer: Answer, now_ms: float | None = None
    ) -> None:
        """Keep `answer`; the oldest entries go to make room.

        With `now_ms`, up to EXPIRED_PER_PUT answers past their freshness also go from the
        oldest end: the answer of a device that left is never asked for again, and keeping
        it (and its repeats) until the cache fills makes the memory follow every device ever
        seen rather than the live ones.
        """
        if self._maxsize <= 0:
            return
        requests = self._requests
        shared = requests.get(request)
        if shared is None:
            if len(requests) >= REQUESTS_SHARED:
                requests.clear()
            shared = requests[request] = request
        slot = (who, shared)
        self._forget(slot)
        if now_ms is not None:
            self._drop_stale(now_ms)
        size = answer_size(slot, answer)
        if size > self._max_bytes:
            return  # larger than the whole budget: never kept
        entries = self._entries
        while entries and (len(entries) >= self._maxsize or self.bytes + size > self._max_bytes):
            self._let_go(*entries.popitem(last=False))
        entries[slot] = answer
        self.bytes += size
        answer.live = True
        by_key = self._by_key
        for key in answer.keys:
            held = by_key.get(key)
            if held is None:
                by_key[key] = slot
            elif isinstance(held, list):
                held.append(slot)
            else:
                by_key[key] = [held, slot]

    def _drop_stale(self, now_ms: float) -> None:
        entries = self._entries
        for _ in range(EXPIRED_PER_PUT):
            if not entries:
                return
            slot = next(iter(entries))
            if entries[slot].fresh_until_ms > now_ms:
                return
            self._let_go(slot, entries.pop(slot))

    def _forget(self, slot: Slot) -> None:
        answer = self._entries.pop(slot, None)
        if answer is not None:
            self._let_go(slot, answer)

    def _let_go(self, slot: Slot, answer: Answer) -> None:
        """An answer leaves the cache: unindex it, end its repeats, mark it for any holder."""
        answer.live = False
        self.bytes -= answer_size(slot, answer)
        for key in answer.repeat_keys:
            repeat = self._repeats.get(key)
            if repeat is not None and repeat.answer is answer:
                self._drop_repeat(key)
        answer.repeat_keys = ()
        self._unindex(slot, answer)

    def _unindex(self, slot: Slot, answer: Answer) -> None:
        by_key = self._by_key
        for key in answer.keys:
            held = by_key.get(key)
            if held is None:
                continue
            if not isinstance(held, list):
                if held == slot:
                    del by_key[key]
            elif slot in held:
                held.remove(slot)
                if len(held) == 1:
                    by_key[key] = held[0]

    def forget_keys(self, keys: Iterable[str]) -> None:
        """Forget every answer holding one of these token keys (and the repeats of each)."""
        for key in keys:
            held = self._by_key.get(key)
            if held is None:
                continue
            for slot in list(held) if isinstance(held, list) else [held]:
                self._forget(slot)

    def clear(self) -> None:
        """Forget everything."""
        for answer in self._entries.values():
            answer.live = False
        self._entries.clear()
        self._by_key.clear()
        self._repeats.clear()
        self.bytes = 0
