"""Revocation that is never lost: purge every cache, block old app JWTs, revoke upstream.

An admin's revocation is accepted only once it is durable: the upstream RevokeToken jobs are
in the queue (a Redis stream with a consumer group when Redis is configured; in memory in the
embedded mode, where a restart loses them, as documented), the issued-before block is stored,
and every process was told to drop its cached copies. A background worker drains the queue at
no more than the RevokeToken quota, retrying until the upstream confirms. Revoking is
idempotent upstream, so a job run twice (after a crash between call and acknowledgement)
does no harm.

Housekeeping, run by the worker every `MAINTENANCE_INTERVAL` seconds: blocks older than the
block retention are pruned (`Revoker.maintain`), and stream consumers left by processes that
are gone are deleted from the group once nothing is pending on them (`reap_consumers`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from authserver.clock import Clock
from authserver.errors import GatewayError, StoreUnavailable, TokenRevoked
from authserver.fingerprint import fingerprint
from authserver.identity import Identity
from authserver.tokens.bus import STOP_TIMEOUT, InvalidationBus
from authserver.tokens.model import TokenRecord
from authserver.tokens.service import TokenService
from authserver.tokens.store import KEY_PREFIX, token_hash

log = logging.getLogger(__name__)

SUBJECT, CLIENT = "subject", "client"
STREAM = KEY_PREFIX + "revocations"
GROUP = "revokers"
FAILURES = KEY_PREFIX + "revocations:failures"
REVOKED = KEY_PREFIX + "revoked"
BLOCKS = {SUBJECT: KEY_PREFIX + "block:subject", CLIENT: KEY_PREFIX + "block:client"}
RECENT_FAILURES = 20
# Unknown tokens have no known expiry; 30 days is the longest any token can live.
MAX_TOKEN_LIFE_MS = 30 * 24 * 3600 * 1000
# How long an issued-before block is kept (AUTHSERVER_REVOCATION_BLOCK_RETENTION): it refuses
# the app JWTs issued before it, and once the last of them has expired it refuses nothing
# that the verifier would not refuse anyway. 30 days covers app JWTs that live up to 30 days
# less the leeway; a longer-lived issuer needs a longer retention.
BLOCK_RETENTION = 30 * 24 * 3600.0
MAINTENANCE_INTERVAL = 60.0
# A consumer that has not read the stream for this long belongs to a process that is gone
# (a live worker reads at least every second).
DEAD_CONSUMER_IDLE = 600.0

Revoke = Callable[[str, str], Awaitable[None]]
# (subject, claims) -> every clientId the policy lets that identity use.
ClientIdsOf = Callable[[str, Mapping[str, Any]], Iterable[str]]


@dataclass(frozen=True)
class RevocationResult:
    """What one admin revocation did."""

    revoked_locally: int
    queued: int
    blocked_before_ms: int | None
    fingerprints: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer of POST /v1/admin/revoke."""
        return {
            "revokedLocally": self.revoked_locally,
            "queued": self.queued,
            "blockedIssuedBefore": self.blocked_before_ms,
            "fingerprints": list(self.fingerprints),
        }


@dataclass(frozen=True)
class Job:
    """One upstream RevokeToken to perform."""

    id: str
    token: str
    instance_id: str
    enqueued_ms: int

    @property
    def fingerprint(self) -> str:
        """Loggable name of the token."""
        return fingerprint(self.token)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RevocationState(Protocol):
    """Where revocations are kept: the job queue, the blocklist, the revoked-token set."""

    mode: str

    async def enqueue(self, jobs: list[tuple[str, str]], now_ms: int) -> int:
        """Queue (token, instance id) pairs durably; how many were queued."""
        ...

    async def claim(self, count: int, wait: float) -> list[Job]:
        """Jobs to work on: stale ones first, then new ones (waits up to `wait` s)."""
        ...

    async def ack(self, job: Job) -> None:
        """The upstream confirmed: forget the job."""
        ...

    async def failed(self, job: Job, reason: str, now_ms: int, *, final: bool) -> None:
        """Record a failure; a final one drops the job, else it is retried later."""
        ...

    async def status(self, now_ms: int) -> dict[str, Any]:
        """Queue depth, oldest pending age, recent failures."""
        ...

    async def mark_revoked(self, hashes: list[tuple[str, int]], now_ms: int) -> None:
        """Remember token hashes as revoked until their expiry."""
        ...

    async def is_revoked(self, digest: str, now_ms: int) -> bool:
        """Whether a token hash was revoked."""
        ...

    async def block(self, scope: str, name: str, before_ms: int) -> None:
        """Store an issued-before block durably."""
        ...

    async def blocks(self) -> dict[str, dict[str, int]]:
        """Every stored block, by scope."""
        ...

    async def prune_blocks(self, older_than_ms: int) -> int:
        """Forget the blocks made before `older_than_ms`; how many went."""
        ...

    async def reap_consumers(self) -> int:
        """Delete the queue consumers of processes that are gone; how many went."""
        ...


class MemoryState:
    """The embedded mode: everything in this process (a restart loses queued jobs)."""

    mode = "memory"

    def __init__(self, retry_delay: float = 1.0) -> None:
        self._pending: collections.OrderedDict[str, tuple[Job, float]] = collections.OrderedDict()
        self._wakeup = asyncio.Event()
        self._retry_delay = retry_delay
        self._failures: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_FAILURES
        )
        self._revoked: dict[str, int] = {}
        self._blocks: dict[str, dict[str, int]] = {SUBJECT: {}, CLIENT: {}}
        self._in_flight: set[str] = set()

    async def enqueue(self, jobs: list[tuple[str, str]], now_ms: int) -> int:
        """Queue jobs in this process."""
        loop = asyncio.get_running_loop()
        for token, instance_id in jobs:
            job = Job(secrets.token_hex(8), token, instance_id, now_ms)
            self._pending[job.id] = (job, loop.time())
        if jobs:
            self._wakeup.set()
        return len(jobs)

    async def claim(self, count: int, wait: float) -> list[Job]:
        """Due jobs not being worked on."""
        loop = asyncio.get_running_loop()
        due = [
            job
            for job, at in self._pending.values()
            if at <= loop.time() and job.id not in self._in_flight
        ][:count]
        if not due:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            return []
        self._in_flight.update(j.id for j in due)
        return due

    async def ack(self, job: Job) -> None:
        """Forget a confirmed job."""
        self._pending.pop(job.id, None)
        self._in_flight.discard(job.id)

    async def failed(self, job: Job, reason: str, now_ms: int, *, final: bool) -> None:
        """Retry later, or drop a job the upstream will never accept."""
        self._failures.appendleft(
            {"fingerprint": job.fingerprint, "reason": reason, "at": now_ms, "final": final}
        )
        self._in_flight.discard(job.id)
        if final:
            self._pending.pop(job.id, None)
        elif job.id in self._pending:
            self._pending[job.id] = (job, asyncio.get_running_loop().time() + self._retry_delay)

    async def status(self, now_ms: int) -> dict[str, Any]:
        """Depth, oldest age, failures."""
        oldest = min((j.enqueued_ms for j, _ in self._pending.values()), default=None)
        return {
            "mode": self.mode,
            "depth": len(self._pending),
            "oldestPendingAgeSeconds": None if oldest is None else (now_ms - oldest) / 1000,
            "recentFailures": list(self._failures),
        }

    async def mark_revoked(self, hashes: list[tuple[str, int]], now_ms: int) -> None:
        """Remember revoked hashes; forget expired ones."""
        for digest, until in hashes:
            self._revoked[digest] = until
        if len(self._revoked) > 10_000:
            self._revoked = {d: u for d, u in self._revoked.items() if u > now_ms}

    async def is_revoked(self, digest: str, now_ms: int) -> bool:
        """Whether the hash was revoked and could still be alive."""
        return self._revoked.get(digest, 0) > now_ms

    async def block(self, scope: str, name: str, before_ms: int) -> None:
        """Keep the block in this process."""
        self._blocks[scope][name] = max(before_ms, self._blocks[scope].get(name, 0))

    async def blocks(self) -> dict[str, dict[str, int]]:
        """A copy of every block."""
        return {scope: dict(entries) for scope, entries in self._blocks.items()}

    async def prune_blocks(self, older_than_ms: int) -> int:
        """Forget old blocks."""
        return _prune(self._blocks, older_than_ms)

    async def reap_consumers(self) -> int:
        """One process, one consumer: nothing to reap."""
        return 0


def _prune(blocks: dict[str, dict[str, int]], older_than_ms: int) -> int:
    pruned = 0
    for entries in blocks.values():
        old = [name for name, before in entries.items() if before < older_than_ms]
        for name in old:
            del entries[name]
        pruned += len(old)
    return pruned


# Times only move forward: a replica with a lagging clock must not lower a block.
_BLOCK_MAX = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (not current) or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""

# Compare-and-delete: a block renewed (moved forward) since it was read is kept.
_BLOCK_PRUNE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(current) < tonumber(ARGV[2]) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Delete a consumer only while nothing is pending on it: XGROUP DELCONSUMER drops the
# consumer's pending entries, which would never be delivered again. One script, so a job
# cannot be handed to the consumer between the check and the delete.
_REAP = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class RedisState:
    """Revocations in Redis: a stream with a consumer group, hashes, a sorted set.

    A job stays pending in the group until acknowledged; a consumer that died (or a job whose
    call failed) leaves it pending, and XAUTOCLAIM hands it to a live consumer once it has
    been idle for `claim_idle` seconds.
    """

    mode = "redis-stream"

    def __init__(
        self,
        redis: aioredis.Redis,
        consumer: str,
        claim_idle: float = 30.0,
        dead_after: float = DEAD_CONSUMER_IDLE,
    ) -> None:
        self._redis = redis
        self._consumer = consumer
        self._claim_idle_ms = int(claim_idle * 1000)
        self._dead_after_ms = int(dead_after * 1000)
        self._group_ready = False
        self._block = redis.register_script(_BLOCK_MAX)
        self._block_prune = redis.register_script(_BLOCK_PRUNE)
        self._reap = redis.register_script(_REAP)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._group_ready = True

    async def enqueue(self, jobs: list[tuple[str, str]], now_ms: int) -> int:
        """XADD every job (one round trip)."""
        if not jobs:
            return 0
        try:
            await self._ensure_group()
            async with self._redis.pipeline(transaction=False) as pipe:
                for token, instance_id in jobs:
                    pipe.xadd(STREAM, {"token": token, "instance": instance_id, "at": str(now_ms)})
                await pipe.execute()
        except RedisError as err:
            raise StoreUnavailable("cannot queue the revocation: Redis is unreachable") from err
        return len(jobs)

    def _jobs(self, entries: Iterable[Any]) -> list[Job]:
        jobs = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            data = {_text(k): _text(v) for k, v in fields.items()}
            jobs.append(Job(_text(entry_id), data["token"], data["instance"], int(data["at"])))
        return jobs

    async def claim(self, count: int, wait: float) -> list[Job]:
        """Stale pending jobs first (dead consumers, failed calls), then new ones."""
        try:
            return await self._claim(count, wait)
        except ResponseError as err:
            if "NOGROUP" in str(err):
                # The group vanished with the stream (Redis restarted without persistence,
                # or was flushed): create it again next round rather than fail forever.
                self._group_ready = False
            raise StoreUnavailable("cannot read the revocation queue") from err
        except RedisError as err:
            raise StoreUnavailable(
                "cannot read the revocation queue: Redis is unreachable"
            ) from err

    async def _claim(self, count: int, wait: float) -> list[Job]:
        await self._ensure_group()
        claimed = await self._redis.xautoclaim(
            STREAM, GROUP, self._consumer, min_idle_time=self._claim_idle_ms, count=count
        )
        stale = self._jobs(claimed[1])
        deleted = claimed[2] if len(claimed) > 2 else []
        if deleted:
            await self._redis.xack(STREAM, GROUP, *deleted)
        if stale:
            return stale
        fresh: Any = await self._redis.xreadgroup(
            GROUP, self._consumer, {STREAM: ">"}, count=count, block=int(wait * 1000)
        )
        return self._jobs(entry for _stream, entries in fresh or [] for entry in entries)

    async def ack(self, job: Job) -> None:
        """XACK and XDEL: the job is done (left pending, and retried, if Redis fails)."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(STREAM, GROUP, job.id)
                pipe.xdel(STREAM, job.id)
                await pipe.execute()
        except RedisError as err:
            raise StoreUnavailable(
                "cannot acknowledge the revocation: Redis is unreachable"
            ) from err

    async def failed(self, job: Job, reason: str, now_ms: int, *, final: bool) -> None:
        """Record the failure for everyone; a retryable job stays pending for XAUTOCLAIM."""
        entry = {"fingerprint": job.fingerprint, "reason": reason, "at": now_ms, "final": final}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(FAILURES, json.dumps(entry))
                pipe.ltrim(FAILURES, 0, RECENT_FAILURES - 1)
                if final:
                    pipe.xack(STREAM, GROUP, job.id)
                    pipe.xdel(STREAM, job.id)
                await pipe.execute()
        except RedisError as err:
            raise StoreUnavailable("cannot record the failure: Redis is unreachable") from err

    async def status(self, now_ms: int) -> dict[str, Any]:
        """XLEN, the oldest entry's age (its id is its enqueue time), recent failures."""
        try:
            await self._ensure_group()
            depth = await self._redis.xlen(STREAM)
            oldest: Any = await self._redis.xrange(STREAM, count=1)
            failures = await self._redis.lrange(FAILURES, 0, RECENT_FAILURES - 1)
        except RedisError as err:
            raise StoreUnavailable("Redis is unreachable") from err
        age = None
        if oldest:
            age = max(0.0, (now_ms - int(_text(oldest[0][0]).split("-")[0])) / 1000)
        return {
            "mode": self.mode,
            "depth": int(depth),
            "oldestPendingAgeSeconds": age,
            "recentFailures": [json.loads(f) for f in failures],
        }

    async def mark_revoked(self, hashes: list[tuple[str, int]], now_ms: int) -> None:
        """ZADD hash -> expiry; prune expired members."""
        if not hashes:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(REVOKED, {digest: until for digest, until in hashes})
                pipe.zremrangebyscore(REVOKED, "-inf", now_ms)
                await pipe.execute()
        except RedisError as err:
            raise StoreUnavailable("cannot record the revocation: Redis is unreachable") from err

    async def is_revoked(self, digest: str, now_ms: int) -> bool:
        """ZSCORE against now."""
        try:
            score = await self._redis.zscore(REVOKED, digest)
        except RedisError as err:
            raise StoreUnavailable("Redis is unreachable") from err
        return score is not None and score > now_ms

    async def block(self, scope: str, name: str, before_ms: int) -> None:
        """HSET the block (times only move forward)."""
        try:
            await self._block(keys=[BLOCKS[scope]], args=[name, before_ms])
        except RedisError as err:
            raise StoreUnavailable("cannot store the block: Redis is unreachable") from err

    async def blocks(self) -> dict[str, dict[str, int]]:
        """HGETALL of both block hashes."""
        found: dict[str, dict[str, int]] = {}
        try:
            for scope, key in BLOCKS.items():
                raw = await self._redis.hgetall(key)
                found[scope] = {_text(k): int(v) for k, v in raw.items()}
        except RedisError as err:
            raise StoreUnavailable("cannot read the blocks: Redis is unreachable") from err
        return found

    async def prune_blocks(self, older_than_ms: int) -> int:
        """HSCAN both block hashes; delete (compare-and-delete) the entries made before."""
        pruned = 0
        try:
            for key in BLOCKS.values():
                async for name, before in self._redis.hscan_iter(key, count=500):
                    if int(before) < older_than_ms:
                        pruned += int(
                            await self._block_prune(keys=[key], args=[name, older_than_ms])
                        )
        except RedisError as err:
            raise StoreUnavailable("cannot prune the blocks: Redis is unreachable") from err
        return pruned

    async def reap_consumers(self) -> int:
        """XGROUP DELCONSUMER the consumers idle past `dead_after` with nothing pending.

        A dead consumer's pending jobs are first handed to live ones by XAUTOCLAIM (`claim`)
        once idle for `claim_idle`; its entry goes on a later round, when none are left.
        """
        try:
            await self._ensure_group()
            consumers: Any = await self._redis.xinfo_consumers(STREAM, GROUP)
            reaped = 0
            for consumer in consumers:
                name = _text(consumer["name"])
                if name == self._consumer or int(consumer["idle"]) < self._dead_after_ms:
                    continue
                if int(consumer["pending"]) == 0:
                    reaped += int(await self._reap(keys=[STREAM], args=[GROUP, name]))
        except RedisError as err:
            raise StoreUnavailable("cannot list the queue consumers: Redis is unreachable") from err
        return reaped


class Revoker:
    """Admin revocations and the local mirror of blocks, kept coherent through the bus."""

    def __init__(
        self,
        tokens: TokenService,
        state: RevocationState,
        bus: InvalidationBus,
        *,
        clock: Clock,
        client_ids: ClientIdsOf | None = None,
        block_retention: float = BLOCK_RETENTION,
    ) -> None:
        self.tokens = tokens
        self.state = state
        self.bus = bus
        self._clock = clock
        self._client_ids = client_ids
        self._block_retention_ms = int(block_retention * 1000)
        self._blocks: dict[str, dict[str, int]] = {SUBJECT: {}, CLIENT: {}}
        # In the embedded mode every block is made here; with Redis they must be read first
        # (readiness waits for it, so a restarted pod never serves a blocked JWT).
        self.blocks_loaded = state.mode == MemoryState.mode
        bus.on_event(self._on_event)
        bus.on_resync(self.resync)
        tokens.on_lost_mint = self.revoke_unstored

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    async def resync(self) -> None:
        """Reload blocks: events may have been missed (the token caches flush themselves)."""
        stored = await self.state.blocks()
        # Merged, not replaced: a block made here while the read was in flight stays.
        for scope, entries in stored.items():
            mine = self._blocks.setdefault(scope, {})
            for name, before in entries.items():
                mine[name] = max(before, mine.get(name, 0))
        self.blocks_loaded = True

    async def maintain(self) -> int:
        """Prune the blocks older than the retention, here and in the state; how many went.

        Every process prunes its own mirror; the shared state is pruned by whichever process
        comes first (the others find nothing left to delete).
        """
        older_than = self._now_ms() - self._block_retention_ms
        _prune(self._blocks, older_than)
        pruned = await self.state.prune_blocks(older_than)
        if pruned:
            log.info("pruned %d revocation block(s) older than the retention", pruned)
        return pruned

    def _on_event(self, event: dict[str, Any]) -> None:
        # `tokens` and `flush` events are the token caches' own (tokens/issuer.py).
        if event.get("kind") == "block":
            scope, name, before = event.get("scope"), event.get("name"), event.get("before_ms")
            if scope in self._blocks and isinstance(name, str) and isinstance(before, int):
                entries = self._blocks[scope]
                entries[name] = max(before, entries.get(name, 0))

    def check(self, identity: Identity, client_id: str | None) -> None:
        """Refuse an app JWT issued before a block of its subject or of one of its clientIds.

        Its clientIds are every one the policy lets the identity use (``client_ids``), not
        only the one it asks with: a blocked device cannot step round its block by naming
        another clientId, or none.
        """
        blocks = self._blocks
        before = blocks[SUBJECT].get(identity.subject)
        if before is not None:
            self._refuse_if_before(identity, SUBJECT, before)
        client_blocks = blocks[CLIENT]
        if not client_blocks:  # the usual case: nothing to look up
            return
        names = set() if client_id is None else {client_id}
        if self._client_ids is not None:
            names.update(self._client_ids(identity.subject, identity.claims))
        for name in names:
            before = client_blocks.get(name)
            if before is not None:
                self._refuse_if_before(identity, CLIENT, before)

    @staticmethod
    def _refuse_if_before(identity: Identity, scope: str, before_ms: int) -> None:
        issued = identity.issued_at
        if issued is None or issued * 1000 < before_ms:
            raise TokenRevoked(
                f"this app token was issued before the {scope} was revoked; "
                "sign in again to get a new one",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    async def _publish(self, event: dict[str, Any]) -> None:
        try:
            await self.bus.publish(event)
        except (RedisError, OSError) as err:
            raise StoreUnavailable(
                "the revocation is stored but other processes could not be told; retry"
            ) from err

    async def _block(self, scope: str, name: str) -> int:
        before = self._now_ms()
        await self.state.block(scope, name, before)
        await self._publish({"kind": "block", "scope": scope, "name": name, "before_ms": before})
        return before

    async def revoke_records(
        self, records: list[tuple[str, TokenRecord]], extra_tokens: Iterable[str] = ()
    ) -> RevocationResult:
        """Queue upstream revocation, mark revoked, purge the store and every L1."""
        now = self._now_ms()
        instance = self.tokens.instance_id
        jobs = [(record.token, record.instance_id) for _key, record in records]
        jobs += [(token, instance) for token in extra_tokens]
        queued = await self.state.enqueue(jobs, now)  # durable first: nothing lost after this
        expiries = [(token_hash(r.token), r.expire_ms) for _k, r in records]
        expiries += [(token_hash(t), now + MAX_TOKEN_LIFE_MS) for t in extra_tokens]
        await self.state.mark_revoked(expiries, now)
        keys = [key for key, _record in records]
        try:
            for key, record in records:
                await self.tokens.store.delete(key, record)
        finally:
            # Even after a partial failure: a retry would no longer find the deleted records,
            # so this is the one chance to tell the other processes to drop them.
            if keys:
                await self._publish({"kind": "tokens", "keys": keys})
        return RevocationResult(
            revoked_locally=len(records),
            queued=queued,
            blocked_before_ms=None,
            fingerprints=tuple(fingerprint(token) for token, _instance in jobs),
        )

    async def revoke_unstored(self, record: TokenRecord) -> None:
        """Revoke a token that was minted across its subject's revocation and never stored.

        No process holds it (it was neither stored nor answered), so only the upstream
        revocation is queued, durably, and the token is remembered as revoked.
        """
        now = self._now_ms()
        await self.state.enqueue([(record.token, record.instance_id)], now)
        await self.state.mark_revoked([(token_hash(record.token), record.expire_ms)], now)

    async def revoke_token(self, token: str) -> RevocationResult:
        """Revoke one token by value (queued upstream even when we never held it)."""
        found = await self.tokens.store.lookup(token)
        if found is not None:
            return await self.revoke_records([found])
        return await self.revoke_records([], extra_tokens=[token])

    async def revoke_subject(
        self, subject: str, *, block_issued_before: bool = True
    ) -> RevocationResult:
        """Revoke every token of a subject; optionally refuse its older app JWTs.

        The subject's epoch moves first: a mint in flight now cannot store its token after
        the tokens are listed below (the token service revokes it instead).
        """
        await self.tokens.store.bump_epoch(subject)
        before = await self._block(SUBJECT, subject) if block_issued_before else None
        result = await self.revoke_records(await self.tokens.store.subject_tokens(subject))
        return _with_block(result, before)

    async def revoke_client(
        self, client_id: str, *, block_issued_before: bool = True
    ) -> RevocationResult:
        """Revoke every token handed to a client id; optionally refuse older app JWTs for it."""
        before = await self._block(CLIENT, client_id) if block_issued_before else None
        result = await self.revoke_records(await self.tokens.store.client_tokens(client_id))
        return _with_block(result, before)

    async def is_revoked(self, token: str) -> bool:
        """Whether we revoked this token (and it could still be alive)."""
        return await self.state.is_revoked(token_hash(token), self._now_ms())

    async def status(self) -> dict[str, Any]:
        """Queue depth, oldest pending age, recent failures."""
        return await self.state.status(self._now_ms())


def _with_block(result: RevocationResult, before: int | None) -> RevocationResult:
    return RevocationResult(result.revoked_locally, result.queued, before, result.fingerprints)


class RevocationWorker:
    """Drains the queue through RevokeToken, paced by the quota governor."""

    def __init__(
        self,
        state: RevocationState,
        revoke: Revoke,
        *,
        clock: Clock,
        batch: int = 5,
        idle_wait: float = 1.0,
        retry_pause: float = 1.0,
        maintain: Callable[[], Awaitable[int]] | None = None,
        maintenance_interval: float = MAINTENANCE_INTERVAL,
    ) -> None:
        self._state = state
        self._revoke = revoke
        self._clock = clock
        self._batch = batch
        self._idle_wait = idle_wait
        self._retry_pause = retry_pause
        self._maintain = maintain
        self._maintenance_interval = maintenance_interval
        self._next_maintenance = 0.0
        self._task: asyncio.Task[None] | None = None
        self.done = 0
        self.failures = 0
        self.store_errors = 0

    def start(self) -> None:
        """Run in the background until stop()."""
        self._task = asyncio.create_task(self._run(), name="revocation-worker")

    async def stop(self) -> None:
        """Cancel and wait (bounded); an interrupted job stays pending and is retried."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_TIMEOUT)
            self._task = None

    async def _housekeeping(self) -> None:
        """Prune old blocks and reap dead consumers, at most every maintenance interval."""
        now = self._clock.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self._maintenance_interval
        if self._maintain is not None:
            await self._maintain()
        reaped = await self._state.reap_consumers()
        if reaped:
            log.info("revocation queue: removed %d consumer(s) of stopped processes", reaped)

    async def _run(self) -> None:
        while True:
            try:
                await self._housekeeping()
                jobs = await self._state.claim(self._batch, self._idle_wait)
                for index, job in enumerate(jobs):
                    try:
                        await self._one(job)
                    except Exception:
                        # Hand the rest of the batch back, or they would stay claimed.
                        now = int(self._clock.time() * 1000)
                        for left in jobs[index:]:
                            await self._state.failed(left, "worker error", now, final=False)
                        raise
            except asyncio.CancelledError:
                raise
            except (StoreUnavailable, RedisError, OSError) as err:
                # A job whose acknowledgement was lost stays pending and is claimed again.
                self.store_errors += 1
                log.warning("revocation worker: store unavailable (%s)", _cause_name(err))
                await self._clock.sleep(self._retry_pause)
            except Exception:
                log.exception("revocation worker: unexpected error")
                await self._clock.sleep(self._retry_pause)

    async def _one(self, job: Job) -> None:
        """One RevokeToken; acknowledged once the upstream confirmed it."""
        try:
            await self._revoke(job.instance_id, job.token)
        except GatewayError as err:
            final = err.status == 502 and not getattr(err, "retryable", True)
            self.failures += 1
            log.warning(
                "revocation of token %s failed (%s)%s",
                job.fingerprint,
                err.code,
                "; giving up" if final else "; will retry",
            )
            await self._state.failed(
                job, f"{err.code}: {err.detail}", int(self._clock.time() * 1000), final=final
            )
            if not final:
                await self._clock.sleep(self._retry_pause)
            return
        await self._state.ack(job)
        self.done += 1
        log.debug("revoked token %s upstream", job.fingerprint)


def _cause_name(err: BaseException) -> str:
    """The name of the Redis error behind a translated one (for the log line)."""
    cause = err.__cause__ if isinstance(err, StoreUnavailable) else None
    return type(cause or err).__name__
