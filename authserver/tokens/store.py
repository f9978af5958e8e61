"""Where tokens are kept between requests: in this process, or in Redis shared by replicas."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from authserver.bounded import ExpiringMap
from authserver.clock import Clock
from authserver.errors import StoreUnavailable
from authserver.tokens.model import DEFAULT_CACHE_BYTES, TokenRecord, record_weight, subject_tag
from authserver.tokens.sharing import MAX_HOLDERS, Holder

KEY_PREFIX = "authserver:"
# How long a revocation epoch is remembered after its last revocation. It only has to
# outlive every mint that read the epoch before that revocation: one request deadline or
# one background renewal (RENEW_DEADLINE), seconds, not an hour. A forgotten epoch reads 0.
EPOCH_TTL_MS = 3600 * 1000
# Revocation epochs: one per (scope, name) a revocation sweeps, a subject, a clientId or a
# revocable claim value (a mark, tokens/revocable.py). A revocation moves its epoch before it
# lists the tokens it revokes, and a token minted under an older epoch is never kept.
SUBJECT_EPOCH, CLIENT_EPOCH, CLAIM_EPOCH = "subject", "client", "claim"
EpochName = tuple[str, str]  # (scope, name)
Epochs = tuple[tuple[str, str, int], ...]  # (scope, name, epoch), read before a mint
# The indexes of shared tokens by holder (see tokens/sharing.py): by subject, by clientId, by
# revocable claim value (a mark, tokens/revocable.py).
HELD_BY_SUBJECT, HELD_BY_CLIENT, HELD_BY_CLAIM = "subject", "client", "claim"
# How many records the Redis store reads (one MGET) or deletes (one pipeline) per round trip
# when it handles many: a policy sweep, a revocation of a subject with thousands of tokens.
# Also the bound on what a sweep holds in memory at once.
BATCH = 500


def token_hash(token: str) -> str:
    """The index key of a token value (the value itself is never a key)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore(Protocol):
    """The operations the token service needs from a store."""

    shared: bool

    async def get(self, key: str, subject: str) -> TokenRecord | None:
        """The live record under `key`, or None."""
        ...

    async def put(self, key: str, record: TokenRecord, *, epochs: Epochs | None = None) -> bool:
        """Keep `record` under `key` until it expires, indexed by subject, client and value.

        With `epochs`, only while every one of them is unchanged; False when one moved, and
        then nothing stays stored.
        """
        ...

    async def epochs(self, names: tuple[EpochName, ...]) -> Epochs:
        """The revocation epochs of `names` (0 for one never revoked, or long ago)."""
        ...

    async def bump_epoch(self, scope: str, name: str) -> int:
        """Move one revocation epoch (before the tokens it revokes are listed)."""
        ...

    async def subject_tokens(self, subject: str) -> list[tuple[str, TokenRecord]]:
        """Every live record of a subject, with its key."""
        ...

    async def client_tokens(self, client_id: str) -> list[tuple[str, TokenRecord]]:
        """Every live record handed to a client id, with its key."""
        ...

    async def claim_tokens(self, mark: str) -> list[tuple[str, TokenRecord]]:
        """Every live record minted for an identity carrying a claim value (its mark)."""
        ...

    async def lookup(self, token: str) -> tuple[str, TokenRecord] | None:
        """The live record holding this token value, with its key."""
        ...

    def all_tokens(self) -> AsyncIterator[tuple[str, TokenRecord]]:
        """Every live record (for policy narrowing and operations, not the hot path)."""
        ...

    async def delete(self, key: str, record: TokenRecord) -> None:
        """Forget one record and its index entries."""
        ...

    async def delete_many(self, records: list[tuple[str, TokenRecord]]) -> None:
        """`delete` each record, in as few round trips as the store can."""
        ...

    async def lock(self, key: str, subject: str, ttl: float) -> str | None:
        """Take the issuance lock for `key`; a lock id, or None when someone else holds it."""
        ...

    async def unlock(self, key: str, subject: str, lock_id: str) -> None:
        """Release a lock taken by `lock`, only if it is still ours."""
        ...

    async def ping(self) -> bool:
        """True when the store answers."""
        ...

    async def hold(self, record: TokenRecord, holder: Holder) -> None:
        """Note that `holder` was handed the shared `record`, until the record expires."""
        ...

    async def held(self, scope: str, name: str) -> list[tuple[str, TokenRecord]]:
        """The live shared records handed to a subject or a clientId (`HELD_BY_*`), with keys.

        Found by token value, so a record retired by a renewal (still valid upstream, still
        held by devices) is found as well as the live one.
        """
        ...

    async def holders(self, record: TokenRecord) -> tuple[list[Holder], bool]:
        """Who was handed the shared `record`, and whether that list is complete."""
        ...

    def watch_evictions(self, callback: Callable[[str], None]) -> None:
        """Have `callback(key)` told of records the store lets go of before anyone asks."""
        ...


# A subject's or client's keys: a tuple while short (nearly always: two or three keys, where
# a set costs 216 bytes and a list of two 88, a tuple 56), replaced when it changes; a set
# once it is long, so that a subject holding thousands of keys (one identity, many
# clientIds) is not indexed and revoked in quadratic time.
Keys = tuple[str, ...] | set[str]
SHORT_KEYS = 16


def _index_add(index: dict[str, Keys], name: str, key: str) -> None:
    """Add `key` under `name`, once."""
    keys = index.get(name)
    if keys is None:
        index[name] = (key,)
    elif isinstance(keys, set):
        keys.add(key)
    elif key not in keys:
        if len(keys) < SHORT_KEYS:
            index[name] = (*keys, key)
        else:
            index[name] = {*keys, key}


def _index_remove(index: dict[str, Keys], name: str, key: str) -> None:
    """Remove `key` from under `name` (and `name` once it holds nothing)."""
    keys = index.get(name)
    if keys is None or key not in keys:
        return
    if isinstance(keys, set):
        keys.remove(key)
    else:
        keys = tuple([k for k in keys if k != key])
        index[name] = keys
    if not keys:
        del index[name]


def _index_of(keys: list[str]) -> Keys:
    return tuple(keys) if len(keys) <= SHORT_KEYS else set(keys)


def _holdings(holder: Holder) -> list[tuple[str, str | None]]:
    """The (scope, name) indexes a holding of a shared token is written under."""
    found: list[tuple[str, str | None]] = [
        (HELD_BY_SUBJECT, holder.subject),
        (HELD_BY_CLIENT, holder.client_id),
    ]
    found.extend((HELD_BY_CLAIM, mark) for mark in holder.marks)
    return found


class MemoryStore:
    """The embedded store: a bounded in-process cache, entries dropped at expiry."""

    shared = False

    def __init__(
        self, clock: Clock, maxsize: int = 200_000, max_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self._clock = clock
        self._maxsize = maxsize
        # Bounded by entries and by bytes (`record_weight`); evicted or expired records take
        # their index entries with them.
        self._records: ExpiringMap[str, TokenRecord] = ExpiringMap(
            maxsize,
            lambda record: record.expire_ms,
            on_drop=self._dropped,
            max_bytes=max_bytes,
            weigh=record_weight,
        )
        self._by_subject: dict[str, Keys] = {}
        self._by_client: dict[str, Keys] = {}
        self._by_claim: dict[str, Keys] = {}
        # Keyed by the token value itself, the very string the record holds: no digest to
        # keep (a 64-character hex string was 113 bytes a token), only the dict's slot.
        self._by_value: dict[str, str] = {}
        # Shared tokens: (scope, name) -> {token hash: expire ms}; token hash -> holders.
        # Entries go with the token's value-index entry, or when met expired.
        self._held: dict[tuple[str, str], dict[str, int]] = {}
        self._holders: dict[str, dict[str, Holder]] = {}
        self._holders_overflow: set[str] = set()
        self._evicted: Callable[[str], None] | None = None
        # (scope, name) -> (epoch, forget after ms): only revoked ones, a handful.
        self._epochs: dict[EpochName, tuple[int, float]] = {}

    def watch_evictions(self, callback: Callable[[str], None]) -> None:
        """Have `callback(key)` told of records evicted (the store is full) or expired."""
        self._evicted = callback

    def _dropped(self, key: str, record: TokenRecord) -> None:
        self._unindex(key, record)
        if self._evicted is not None:
            self._evicted(key)

    def _now_ms(self) -> float:
        return self._clock.time() * 1000

    def _live_record(self, key: str) -> TokenRecord | None:
        return self._records.get(key, self._now_ms())

    async def get(self, key: str, subject: str) -> TokenRecord | None:
        """The live record under `key`, or None."""
        return self._live_record(key)

    async def epochs(self, names: tuple[EpochName, ...]) -> Epochs:
        """The revocation epochs of `names` (0 when never revoked, or long ago)."""
        return tuple((scope, name, self._epoch((scope, name))) for scope, name in names)

    def _epoch(self, name: EpochName) -> int:
        found = self._epochs.get(name)
        if found is None or found[1] <= self._now_ms():
            return 0
        return found[0]

    async def bump_epoch(self, scope: str, name: str) -> int:
        """Move one epoch; forget the epochs of those revoked long ago."""
        now_ms = self._now_ms()
        if len(self._epochs) >= 1024:
            self._epochs = {n: e for n, e in self._epochs.items() if e[1] > now_ms}
        epoch = self._epoch((scope, name)) + 1
        self._epochs[scope, name] = (epoch, now_ms + EPOCH_TTL_MS)
        return epoch

    async def put(self, key: str, record: TokenRecord, *, epochs: Epochs | None = None) -> bool:
        """Keep `record` under `key` until it expires (if every one of `epochs` holds)."""
        # No await between the check and the write: one step on the event loop.
        if epochs and any(self._epoch((s, n)) != e for s, n, e in epochs):
            return False
        old = self._records.pop(key)
        if old is not None:
            self._unindex(key, old)
        if not self._records.put(key, record, self._now_ms()):
            # Larger than the whole byte bound: handed out, never kept (nor indexed).
            return True
        _index_add(self._by_subject, record.subject, key)
        if record.client_id is not None:
            _index_add(self._by_client, record.client_id, key)
        for mark in record.marks:
            _index_add(self._by_claim, mark, key)
        self._by_value[record.token] = key
        return True

    def _live(self, index: dict[str, Keys], name: str) -> list[tuple[str, TokenRecord]]:
        keys = index.get(name, ())
        found = [(k, r) for k in list(keys) if (r := self._live_record(k)) is not None]
        if len(found) != len(keys):
            if found:
                index[name] = _index_of([k for k, _ in found])
            else:
                index.pop(name, None)
        return found

    async def subject_tokens(self, subject: str) -> list[tuple[str, TokenRecord]]:
        """Every live record of a subject, with its key."""
        return [(k, r) for k, r in self._live(self._by_subject, subject) if r.subject == subject]

    async def client_tokens(self, client_id: str) -> list[tuple[str, TokenRecord]]:
        """Every live record handed to a client id, with its key."""
        return [
            (k, r) for k, r in self._live(self._by_client, client_id) if r.client_id == client_id
        ]

    async def claim_tokens(self, mark: str) -> list[tuple[str, TokenRecord]]:
        """Every live record minted for an identity carrying the claim value `mark`."""
        return [(k, r) for k, r in self._live(self._by_claim, mark) if mark in r.marks]

    async def lookup(self, token: str) -> tuple[str, TokenRecord] | None:
        """The live record holding this token value, with its key."""
        key = self._by_value.get(token)
        if key is None:
            return None
        record = self._live_record(key)
        if record is None or record.token != token:
            self._by_value.pop(token, None)
            return None
        return key, record

    async def all_tokens(self) -> AsyncIterator[tuple[str, TokenRecord]]:
        """Every live record."""
        for key, record in self._records.items(self._now_ms()):
            yield key, record

    def _unindex(self, key: str, record: TokenRecord) -> None:
        for index, name in (
            (self._by_subject, record.subject),
            (self._by_client, record.client_id),
        ):
            if name is not None:
                _index_remove(index, name, key)
        for mark in record.marks:
            _index_remove(self._by_claim, mark, key)
        # Only the entry pointing here: after a renewal the replaced record's value is
        # indexed under its retired key, and replacing the record under the live key must
        # leave that entry alone (a revocation by value must still find the old token).
        value = record.token
        if self._by_value.get(value) == key:
            del self._by_value[value]
            self._holders.pop(value, None)
            self._holders_overflow.discard(value)

    async def hold(self, record: TokenRecord, holder: Holder) -> None:
        """Index the shared record under its holder's subject, clientId and claim values."""
        value = record.token
        now_ms = self._now_ms()
        for scope, name in _holdings(holder):
            if name is None:
                continue
            tokens = self._held.setdefault((scope, name), {})
            if len(tokens) >= 8:  # a holder of many tokens over time: forget the dead ones
                for dead in [d for d, until in tokens.items() if until <= now_ms]:
                    del tokens[dead]
            tokens[value] = record.expire_ms
        holders = self._holders.setdefault(value, {})
        if holder.subject in holders or len(holders) < MAX_HOLDERS:
            holders[holder.subject] = holder
        else:
            self._holders_overflow.add(value)
        if len(self._held) > 2 * self._maxsize:
            # Bounded like the records: the dead go first, then the oldest holders (whose
            # shared token a revocation of them then no longer finds, as with an evicted
            # record of their own).
            live = {k: v for k, v in self._held.items() if any(u > now_ms for u in v.values())}
            excess = len(live) - self._maxsize
            for oldest in list(live)[: max(excess, 0)]:
                del live[oldest]
            self._held = live

    async def held(self, scope: str, name: str) -> list[tuple[str, TokenRecord]]:
        """The live shared records a subject or clientId was handed."""
        tokens = self._held.get((scope, name), {})
        found = []
        for value in list(tokens):
            key = self._by_value.get(value)
            record = None if key is None else self._live_record(key)
            if key is None or record is None or record.token != value:
                del tokens[value]
                continue
            found.append((key, record))
        if not tokens:
            self._held.pop((scope, name), None)
        return found

    async def holders(self, record: TokenRecord) -> tuple[list[Holder], bool]:
        """Who was handed the shared record (complete unless past MAX_HOLDERS)."""
        value = record.token
        return list(self._holders.get(value, {}).values()), value not in self._holders_overflow

    async def delete(self, key: str, record: TokenRecord) -> None:
        """Forget one record."""
        current = self._records.pop(key)
        self._unindex(key, current or record)

    async def delete_many(self, records: list[tuple[str, TokenRecord]]) -> None:
        """Forget each record."""
        for key, record in records:
            await self.delete(key, record)

    async def lock(self, key: str, subject: str, ttl: float) -> str | None:
        """One process: the in-process single-flight is the lock."""
        return "local"

    async def unlock(self, key: str, subject: str, lock_id: str) -> None:
        """Nothing to release in one process."""

    async def ping(self) -> bool:
        """Always reachable."""
        return True


_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: record, subject index, subject epoch. ARGV: json, ttl ms, expire ms, key, now ms,
# the subject epoch the record was minted under ('' for none). It shares the record's slot.
_PUT = """
if ARGV[6] ~= '' and (redis.call('GET', KEYS[3]) or '0') ~= ARGV[6] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

# KEYS: index zset. ARGV: expire ms, member, now ms, ttl ms.
_INDEX = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""

# KEYS: record, subject index. ARGV: key. Both go together, as `_PUT` wrote them: a renewal
# storing the key again in between cannot be left without its subject index entry.
_DELETE = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


# KEYS: holders hash. ARGV: subject, holder json, max holders, ttl ms. The field '' (no
# identity has an empty subject) marks a list that stopped growing at the bound.
_HOLDER = """
local known = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
if known or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], '', '1')
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""


class RedisStore:
    """Tokens in Redis, shared by every process and replica.

    The keys of one subject share a hash tag, so the store works on Redis Cluster and the
    record plus its subject index are written by one script, atomically. The client and
    token-value indexes live in other slots and are written after the record: a crash
    between the two leaves a record that is found by subject but not by client or value,
    never an index entry pointing at nothing that matters (lookups re-check the record).
    """

    shared = True

    def __init__(self, client: aioredis.Redis, clock: Clock) -> None:
        self._redis = client
        self._clock = clock
        self._put = client.register_script(_PUT)
        self._index = client.register_script(_INDEX)
        self._unlock = client.register_script(_UNLOCK)
        self._holder = client.register_script(_HOLDER)

    @staticmethod
    def _tag(subject: str) -> str:
        return "{" + subject_tag(subject) + "}"

    def _record_key(self, key: str, subject: str) -> str:
        return f"{KEY_PREFIX}tok:{self._tag(subject)}:{key}"

    def _index_key(self, subject: str) -> str:
        return f"{KEY_PREFIX}sub:{self._tag(subject)}"

    def _client_key(self, client_id: str) -> str:
        return f"{KEY_PREFIX}cli:{{{subject_tag(client_id)}}}"

    def _claim_key(self, mark: str) -> str:
        return f"{KEY_PREFIX}claim:{{{subject_tag(mark)}}}"

    def _value_key(self, token: str) -> str:
        return self._digest_key(token_hash(token))

    @staticmethod
    def _digest_key(digest: str) -> str:
        return f"{KEY_PREFIX}val:{{{digest[:16]}}}:{digest}"

    @staticmethod
    def _held_key(scope: str, name: str) -> str:
        return f"{KEY_PREFIX}held:{scope}:{{{subject_tag(name)}}}"

    @staticmethod
    def _holders_key(digest: str) -> str:
        return f"{KEY_PREFIX}holders:{{{digest[:16]}}}:{digest}"

    def _epoch_key(self, scope: str, name: str) -> str:
        if scope == SUBJECT_EPOCH:  # in the subject's slot: `_PUT` checks it as it writes
            return f"{KEY_PREFIX}epoch:{self._tag(name)}"
        return f"{KEY_PREFIX}epoch:{scope}:{{{subject_tag(name)}}}"

    def _lock_key(self, key: str, subject: str) -> str:
        return f"{KEY_PREFIX}lock:{self._tag(subject)}:{key}"

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    def _parse(self, raw: bytes | str | None) -> TokenRecord | None:
        if raw is None:
            return None
        record = TokenRecord.from_json(raw)
        return record if record.expire_ms > self._now_ms() else None

    async def get(self, key: str, subject: str) -> TokenRecord | None:
        """The live record under `key`, or None."""
        try:
            raw = await self._redis.get(self._record_key(key, subject))
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        return self._parse(raw)

    async def epochs(self, names: tuple[EpochName, ...]) -> Epochs:
        """The revocation epochs of `names`, shared by every process (0 when never revoked)."""
        try:
            if len(names) == 1:
                raws = [await self._redis.get(self._epoch_key(*names[0]))]
            else:  # in different slots: a pipeline, not a transaction (nor MGET)
                async with self._redis.pipeline(transaction=False) as pipe:
                    for scope, name in names:
                        pipe.get(self._epoch_key(scope, name))
                    raws = await pipe.execute()
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        return tuple(
            (scope, name, 0 if raw is None else int(raw))
            for (scope, name), raw in zip(names, raws, strict=True)
        )

    async def bump_epoch(self, scope: str, name: str) -> int:
        """INCR one epoch (kept EPOCH_TTL_MS after the last revocation)."""
        key = self._epoch_key(scope, name)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.pexpire(key, EPOCH_TTL_MS)
                epoch, _ = await pipe.execute()
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        return int(epoch)

    async def put(self, key: str, record: TokenRecord, *, epochs: Epochs | None = None) -> bool:
        """Keep `record` until it expires, indexed by subject, client and value.

        With `epochs`, the record is stored only while each of them holds. The subject's is
        checked by the script that writes the record; the others live in other slots (a
        clientId's revocation cannot know which subjects' slots to touch), so they are read
        once the record and all its indexes are written, and a moved one has the record
        deleted again: a revocation moves its epoch before it lists, so either it finds the
        record or this read sees the move.
        """
        now_ms = self._now_ms()
        ttl_ms = record.expire_ms - now_ms
        if ttl_ms <= 0:
            return True  # dead already: nothing to keep, nothing lost
        subject_epoch = ""
        others: list[tuple[str, str, int]] = []
        for scope, name, epoch in epochs or ():
            if scope == SUBJECT_EPOCH and name == record.subject:
                subject_epoch = str(epoch)
            else:
                others.append((scope, name, epoch))
        locator = json.dumps([record.subject, key], ensure_ascii=False)
        try:
            stored = await self._put(
                keys=[
                    self._record_key(key, record.subject),
                    self._index_key(record.subject),
                    self._epoch_key(SUBJECT_EPOCH, record.subject),
                ],
                args=[record.to_json(), ttl_ms, record.expire_ms, key, now_ms, subject_epoch],
            )
            if not stored:
                return False
            await self._redis.set(self._value_key(record.token), locator, px=ttl_ms)
            if record.client_id is not None:
                await self._index(
                    keys=[self._client_key(record.client_id)],
                    args=[record.expire_ms, locator, now_ms, ttl_ms],
                )
            for mark in record.marks:
                await self._index(
                    keys=[self._claim_key(mark)],
                    args=[record.expire_ms, locator, now_ms, ttl_ms],
                )
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        if others:
            now = await self.epochs(tuple((scope, name) for scope, name, _e in others))
            if now != tuple(others):
                await self.delete(key, record)
                return False
        return True

    async def _mget(self, names: list[str]) -> list[bytes | str | None]:
        """GET of many keys, a round trip per BATCH (on a cluster, a pipeline of MGETs by slot)."""
        raws: list[bytes | str | None] = []
        for start in range(0, len(names), BATCH):
            batch = names[start : start + BATCH]
            if isinstance(self._redis, aioredis.RedisCluster):
                raws += await self._redis.mget_nonatomic(batch)
            else:
                raws += await self._redis.mget(batch)
        return raws

    async def _records(self, locators: list[tuple[str, str]]) -> list[tuple[str, TokenRecord]]:
        """The live records of (subject, key) locators."""
        try:
            raws = await self._mget([self._record_key(key, subject) for subject, key in locators])
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        return [
            (key, record)
            for (_subject, key), raw in zip(locators, raws, strict=True)
            if (record := self._parse(raw)) is not None
        ]

    async def subject_tokens(self, subject: str) -> list[tuple[str, TokenRecord]]:
        """Every live record of a subject, with its key."""
        try:
            keys = await self._redis.zrangebyscore(self._index_key(subject), self._now_ms(), "+inf")
            if not keys:
                return []
            names = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
            raws = await self._redis.mget([self._record_key(k, subject) for k in names])
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        return [
            (k, record)
            for k, raw in zip(names, raws, strict=True)
            if (record := self._parse(raw)) is not None
        ]

    async def client_tokens(self, client_id: str) -> list[tuple[str, TokenRecord]]:
        """Every live record handed to a client id, with its key."""
        records = await self._located(self._client_key(client_id))
        return [(k, r) for k, r in records if r.client_id == client_id]

    async def claim_tokens(self, mark: str) -> list[tuple[str, TokenRecord]]:
        """Every live record minted for an identity carrying the claim value `mark`."""
        records = await self._located(self._claim_key(mark))
        return [(k, r) for k, r in records if mark in r.marks]

    async def _located(self, index_key: str) -> list[tuple[str, TokenRecord]]:
        """The live records of an index of (subject, key) locators."""
        try:
            members = await self._redis.zrangebyscore(index_key, self._now_ms(), "+inf")
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        locators: list[tuple[str, str]] = []
        for member in members:
            subject, key = json.loads(member if isinstance(member, bytes | str) else str(member))
            locators.append((str(subject), str(key)))
        return await self._records(locators)

    async def lookup(self, token: str) -> tuple[str, TokenRecord] | None:
        """The live record holding this token value, with its key."""
        try:
            raw = await self._redis.get(self._value_key(token))
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        if raw is None:
            return None
        subject, key = json.loads(raw)
        record = await self.get(str(key), str(subject))
        if record is None or record.token != token:
            return None
        return str(key), record

    async def all_tokens(self) -> AsyncIterator[tuple[str, TokenRecord]]:
        """Every live record, by SCAN (on a cluster, redis-py scans every node).

        The records are read BATCH keys at a time, one MGET each (a GET per key made a sweep
        of 5,000 records take seconds); a record gone between the SCAN and the read is
        skipped, and no more than one batch is held at once.
        """
        try:
            names: list[str] = []
            async for name in self._redis.scan_iter(match=f"{KEY_PREFIX}tok:*", count=BATCH):
                names.append(name.decode() if isinstance(name, bytes) else str(name))
                if len(names) >= BATCH:
                    for found in await self._scanned(names):
                        yield found
                    names = []
            for found in await self._scanned(names):
                yield found
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err

    async def _scanned(self, names: list[str]) -> list[tuple[str, TokenRecord]]:
        """The live records under the record keys `names`, with their keys."""
        raws = await self._mget(names)
        return [
            (name.rsplit(":", 1)[1], record)
            for name, raw in zip(names, raws, strict=True)
            if (record := self._parse(raw)) is not None
        ]

    async def delete(self, key: str, record: TokenRecord) -> None:
        """Forget one record and its index entries."""
        await self.delete_many([(key, record)])

    async def delete_many(self, records: list[tuple[str, TokenRecord]]) -> None:
        """Forget records and their index entries, BATCH records per pipeline.

        A pipeline, not a transaction: the keys of a batch live in many slots. Each record
        and its subject index entry go together (`_DELETE`), then its value and its client
        and claim index entries, as one at a time did; every command of a batch is run
        even when one fails, and the first failure is raised.
        """
        try:
            for start in range(0, len(records), BATCH):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, record in records[start : start + BATCH]:
                        subject = record.subject
                        locator = json.dumps([subject, key], ensure_ascii=False)
                        keys = (self._record_key(key, subject), self._index_key(subject))
                        pipe.eval(_DELETE, 2, *keys, key)
                        pipe.delete(self._value_key(record.token))
                        if record.client_id is not None:
                            pipe.zrem(self._client_key(record.client_id), locator)
                        for mark in record.marks:
                            pipe.zrem(self._claim_key(mark), locator)
                    await pipe.execute()
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err

    async def lock(self, key: str, subject: str, ttl: float) -> str | None:
        """SET NX PX: a lock that expires by itself if its holder dies."""
        lock_id = secrets.token_hex(8)
        try:
            taken = await self._redis.set(
                self._lock_key(key, subject), lock_id, nx=True, px=int(ttl * 1000)
            )
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        return lock_id if taken else None

    async def unlock(self, key: str, subject: str, lock_id: str) -> None:
        """Compare-and-delete, so an expired lock taken over by another is left alone."""
        try:
            await self._unlock(keys=[self._lock_key(key, subject)], args=[lock_id])
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err

    async def hold(self, record: TokenRecord, holder: Holder) -> None:
        """ZADD the token's hash to its holder's indexes; HSET the holder beside the token."""
        now_ms = self._now_ms()
        ttl_ms = record.expire_ms - now_ms
        if ttl_ms <= 0:
            return
        digest = token_hash(record.token)
        try:
            for scope, name in _holdings(holder):
                if name is not None:
                    await self._index(
                        keys=[self._held_key(scope, name)],
                        args=[record.expire_ms, digest, now_ms, ttl_ms],
                    )
            await self._holder(
                keys=[self._holders_key(digest)],
                args=[
                    holder.subject,
                    json.dumps(holder.to_list(), separators=(",", ":"), ensure_ascii=False),
                    MAX_HOLDERS,
                    ttl_ms,
                ],
            )
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err

    async def held(self, scope: str, name: str) -> list[tuple[str, TokenRecord]]:
        """The live shared records a subject or clientId was handed, found by value."""
        try:
            digests = await self._redis.zrangebyscore(
                self._held_key(scope, name), self._now_ms(), "+inf"
            )
            names = [d.decode() if isinstance(d, bytes) else str(d) for d in digests]
            located = await self._mget([self._digest_key(digest) for digest in names])
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        wanted: dict[tuple[str, str], set[str]] = {}
        for digest, raw in zip(names, located, strict=True):
            if raw is not None:
                subject, key = json.loads(raw)
                wanted.setdefault((str(subject), str(key)), set()).add(digest)
        return [
            (key, record)
            for key, record in await self._records(list(wanted))
            if token_hash(record.token) in wanted.get((record.subject, key), set())
        ]

    async def holders(self, record: TokenRecord) -> tuple[list[Holder], bool]:
        """HGETALL of the token's holders; the field '' says the list is incomplete."""
        try:
            raw = await self._redis.hgetall(self._holders_key(token_hash(record.token)))
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        holders: list[Holder] = []
        complete = True
        for field, value in raw.items():
            subject = field.decode() if isinstance(field, bytes) else str(field)
            if not subject:
                complete = False
                continue
            holders.append(Holder.from_list(subject, json.loads(value)))
        return holders, complete

    async def ping(self) -> bool:
        """True when Redis answers PING."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    def watch_evictions(self, callback: Callable[[str], None]) -> None:
        """Nothing to watch: Redis expires and evicts keys without telling this process.

        A record Redis evicted (maxmemory) can still be held by an answer here until that
        answer is due for renewal, and a revocation will not find it; run Redis without
        eviction (`maxmemory-policy noeviction`, as the README says).
        """
