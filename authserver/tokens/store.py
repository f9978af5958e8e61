"""Where tokens are kept between requests: in this process, or in Redis shared by replicas."""

from __future__ import annotations

import secrets
from typing import Protocol

import redis.asyncio as aioredis
from cachetools import TLRUCache
from redis.exceptions import RedisError

from authserver.clock import Clock
from authserver.errors import StoreUnavailable
from authserver.tokens.model import TokenRecord, subject_tag

KEY_PREFIX = "authserver:"


class TokenStore(Protocol):
    """The operations the token service needs from a store."""

    shared: bool

    async def get(self, key: str, subject: str) -> TokenRecord | None:
        """The live record under `key`, or None."""
        ...

    async def put(self, key: str, record: TokenRecord) -> None:
        """Keep `record` under `key` until it expires."""
        ...

    async def subject_tokens(self, subject: str) -> list[tuple[str, TokenRecord]]:
        """Every live record of a subject, with its key."""
        ...

    async def delete(self, key: str, subject: str) -> None:
        """Forget one record."""
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


class MemoryStore:
    """The embedded store: a bounded in-process cache, entries dropped at expiry."""

    shared = False

    def __init__(self, clock: Clock, maxsize: int = 200_000) -> None:
        self._clock = clock
        self._records: TLRUCache[str, TokenRecord] = TLRUCache(
            maxsize=maxsize,
            ttu=lambda _key, record, _now: record.expire_ms / 1000.0,
            timer=clock.time,
        )
        self._by_subject: dict[str, set[str]] = {}

    async def get(self, key: str, subject: str) -> TokenRecord | None:
        """The live record under `key`, or None."""
        return self._records.get(key)

    async def put(self, key: str, record: TokenRecord) -> None:
        """Keep `record` under `key` until it expires."""
        self._records[key] = record
        self._by_subject.setdefault(record.subject, set()).add(key)

    async def subject_tokens(self, subject: str) -> list[tuple[str, TokenRecord]]:
        """Every live record of a subject, with its key."""
        keys = self._by_subject.get(subject, set())
        found = [(k, r) for k in list(keys) if (r := self._records.get(k)) is not None]
        live = {k for k, _ in found}
        if live != keys:
            if live:
                self._by_subject[subject] = live
            else:
                self._by_subject.pop(subject, None)
        return found

    async def delete(self, key: str, subject: str) -> None:
        """Forget one record."""
        self._records.pop(key, None)
        keys = self._by_subject.get(subject)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_subject[subject]

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

_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local ttl = redis.call('PTTL', KEYS[2])
if ttl < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""


class RedisStore:
    """Tokens in Redis, shared by every process and replica.

    The keys of one subject share a hash tag, so the store works on Redis Cluster and the
    record plus its subject index are written by one script, atomically.
    """

    shared = True

    def __init__(self, client: aioredis.Redis, clock: Clock) -> None:
        self._redis = client
        self._clock = clock
        self._put = client.register_script(_PUT)
        self._unlock = client.register_script(_UNLOCK)

    @staticmethod
    def _tag(subject: str) -> str:
        return "{" + subject_tag(subject) + "}"

    def _record_key(self, key: str, subject: str) -> str:
        return f"{KEY_PREFIX}tok:{self._tag(subject)}:{key}"

    def _index_key(self, subject: str) -> str:
        return f"{KEY_PREFIX}sub:{self._tag(subject)}"

    def _lock_key(self, key: str, subject: str) -> str:
        return f"{KEY_PREFIX}lock:{self._tag(subject)}:{key}"

    async def get(self, key: str, subject: str) -> TokenRecord | None:
        """The live record under `key`, or None."""
        try:
            raw = await self._redis.get(self._record_key(key, subject))
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        if raw is None:
            return None
        record = TokenRecord.from_json(raw)
        if record.expire_ms <= self._clock.time() * 1000:
            return None
        return record

    async def put(self, key: str, record: TokenRecord) -> None:
        """Keep `record` until it expires, and index it under its subject."""
        now_ms = int(self._clock.time() * 1000)
        ttl_ms = record.expire_ms - now_ms
        if ttl_ms <= 0:
            return
        try:
            await self._put(
                keys=[self._record_key(key, record.subject), self._index_key(record.subject)],
                args=[record.to_json(), ttl_ms, record.expire_ms, key, now_ms],
            )
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err

    async def subject_tokens(self, subject: str) -> list[tuple[str, TokenRecord]]:
        """Every live record of a subject, with its key."""
        now_ms = int(self._clock.time() * 1000)
        try:
            keys = await self._redis.zrangebyscore(self._index_key(subject), now_ms, "+inf")
            if not keys:
                return []
            names = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
            raws = await self._redis.mget([self._record_key(k, subject) for k in names])
        except RedisError as err:
            raise StoreUnavailable("the token store (Redis) is unreachable") from err
        return [(k, TokenRecord.from_json(raw)) for k, raw in zip(names, raws, strict=True) if raw]

    async def delete(self, key: str, subject: str) -> None:
        """Forget one record and its index entry."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._record_key(key, subject))
                pipe.zrem(self._index_key(subject), key)
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

    async def ping(self) -> bool:
        """True when Redis answers PING."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False
