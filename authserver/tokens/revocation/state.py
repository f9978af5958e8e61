"""Where revocations are kept: the durable job queue, the issued-before blocks, revoked hashes.

`MemoryState` keeps them in this process (the embedded mode: a restart loses queued jobs);
`RedisState` in a Redis stream with a consumer group, hashes and a sorted set. Jobs held back
by a grace margin wait in a second sorted set (in memory: a list) until `promote_due` moves
them into the queue, which the worker calls every round with the injected clock's time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError

from authserver.errors import RevocationNotReplicated, StoreUnavailable
from authserver.fingerprint import fingerprint
from authserver.tokens.store import KEY_PREFIX, token_hash

SUBJECT, CLIENT, CLAIM = "subject", "client", "claim"
STREAM = KEY_PREFIX + "revocations"
# Jobs held back by a grace margin until they are due (score: due epoch ms). The hash tag is
# the stream's whole name, so both keys share a cluster slot and one script moves due jobs
# from here to the stream atomically: a job is in one of the two, never in neither.
DELAYED = "{" + STREAM + "}:delayed"
# Tokens revoked upstream lately (hash -> until when, ms), in the stream's slot (its hash
# tag is the stream's name), so that a job and its mark are written by one script.
CARRIED = KEY_PREFIX + "revocations:carried:{" + STREAM + "}"
# A job queued twice for one token (an admin retrying a revocation that was refused after
# it was queued) comes within minutes; a day is plenty.
CARRIED_RETENTION_MS = 24 * 3600 * 1000
GROUP = "revokers"
FAILURES = KEY_PREFIX + "revocations:failures"
REVOKED = KEY_PREFIX + "revoked"
BLOCKS = {
    SUBJECT: KEY_PREFIX + "block:subject",
    CLIENT: KEY_PREFIX + "block:client",
    CLAIM: KEY_PREFIX + "block:claim",
}
# Due delayed jobs moved to the queue per worker round.
PROMOTE_BATCH = 100
RECENT_FAILURES = 20
# A consumer that has not read the stream for this long belongs to a process that is gone
# (a live worker reads at least every second).
DEAD_CONSUMER_IDLE = 600.0


@dataclass(frozen=True)
class Job:
    """One upstream RevokeToken to perform."""

    id: str
    token: str
    instance_id: str
    enqueued_ms: int
    # Handed out before: its RevokeToken may have reached the upstream already (the worker
    # crashed, or its acknowledgement was lost with a failed-over Redis master).
    redelivered: bool = False

    @property
    def fingerprint(self) -> str:
        """Loggable name of the token."""
        return fingerprint(self.token)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RevocationState(Protocol):
    """Where revocations are kept: the job queue, the blocklist, the revoked-token set."""

    mode: str

    async def enqueue(
        self, jobs: list[tuple[str, str]], now_ms: int, *, not_before_ms: int = 0
    ) -> int:
        """Queue (token, instance id) pairs durably; how many were queued.

        With `not_before_ms` later than `now_ms`, the jobs are held back (durably) until
        then: `promote_due` hands them to the queue once the clock gets there.
        """
        ...

    async def promote_due(self, now_ms: int) -> int:
        """Move the held-back jobs due by `now_ms` into the queue; how many moved."""
        ...

    async def claim(self, count: int, wait: float) -> list[Job]:
        """Jobs to work on: stale ones first, then new ones (waits up to `wait` s)."""
        ...

    async def keep(self, job: Job) -> bool:
        """Whether this consumer still holds `job`; restarts the time it counts as idle."""
        ...

    async def carried(self, job: Job) -> bool:
        """Whether another job for the same token was carried out upstream lately."""
        ...

    async def ack(self, job: Job) -> None:
        """The upstream confirmed: forget the job (and remember its token as carried)."""
        ...

    async def failed(self, job: Job, reason: str, now_ms: int, *, final: bool) -> None:
        """Record a failure; a final one drops the job, else it is retried later."""
        ...

    async def status(self, now_ms: int) -> dict[str, Any]:
        """Queue depth, held-back (delayed) jobs, oldest pending age, recent failures."""
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

    async def blocks_of(self, wanted: Mapping[str, tuple[str, ...]]) -> dict[str, dict[str, int]]:
        """The stored blocks of these names, by scope (a name without one is left out)."""
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
        self._blocks: dict[str, dict[str, int]] = {scope: {} for scope in BLOCKS}
        self._in_flight: set[str] = set()
        # Held back by a grace margin: (due epoch ms, job), by the injected clock's time.
        self._delayed: list[tuple[int, Job]] = []

    async def enqueue(
        self, jobs: list[tuple[str, str]], now_ms: int, *, not_before_ms: int = 0
    ) -> int:
        """Queue jobs in this process (held back until `not_before_ms`, if later)."""
        loop = asyncio.get_running_loop()
        for token, instance_id in jobs:
            job = Job(secrets.token_hex(8), token, instance_id, now_ms)
            if not_before_ms > now_ms:
                self._delayed.append((not_before_ms, job))
            else:
                self._pending[job.id] = (job, loop.time())
        if jobs and not_before_ms <= now_ms:
            self._wakeup.set()
        return len(jobs)

    async def promote_due(self, now_ms: int) -> int:
        """Move the due held-back jobs into the queue."""
        due = [job for at, job in self._delayed if at <= now_ms]
        if not due:
            return 0
        self._delayed = [(at, job) for at, job in self._delayed if at > now_ms]
        loop = asyncio.get_running_loop()
        for job in due:
            self._pending[job.id] = (job, loop.time())
        self._wakeup.set()
        return len(due)

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

    async def keep(self, job: Job) -> bool:
        """One process, one consumer: a job it took is its own until done."""
        return job.id in self._in_flight

    async def carried(self, job: Job) -> bool:
        """Nothing fails half-way in one process: a second job is an admin's own repeat."""
        return False

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
            retry = dataclasses.replace(job, redelivered=True)
            self._pending[job.id] = (retry, asyncio.get_running_loop().time() + self._retry_delay)

    async def status(self, now_ms: int) -> dict[str, Any]:
        """Depth, oldest age, failures."""
        oldest = min((j.enqueued_ms for j, _ in self._pending.values()), default=None)
        return {
            "mode": self.mode,
            "depth": len(self._pending),
            "delayed": len(self._delayed),
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

    async def blocks_of(self, wanted: Mapping[str, tuple[str, ...]]) -> dict[str, dict[str, int]]:
        """The blocks of these names."""
        found: dict[str, dict[str, int]] = {}
        for scope, names in wanted.items():
            entries = self._blocks[scope]
            found[scope] = {name: entries[name] for name in names if name in entries}
        return found

    async def prune_blocks(self, older_than_ms: int) -> int:
        """Forget old blocks."""
        return prune_entries(self._blocks, older_than_ms)

    async def reap_consumers(self) -> int:
        """One process, one consumer: nothing to reap."""
        return 0


def prune_entries(blocks: dict[str, dict[str, int]], older_than_ms: int) -> int:
    """Drop the entries made before `older_than_ms` from every scope; how many went."""
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

# KEYS: stream, delayed zset. ARGV: now ms, batch. Each due job goes to the stream as it was
# queued (its enqueue time kept), and leaves the zset in the same step.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local job = cjson.decode(member)
  redis.call('XADD', KEYS[1], '*', 'token', job.token, 'instance', job.instance, 'at', job.at)
  redis.call('ZREM', KEYS[2], member)
end
return #due
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


# Acknowledge a job and mark its token carried, with Redis's clock (every process agrees).
_ACK = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return 1
"""

# Restart the idle time of a pending job, but only while this consumer still holds it: one
# that waited in a batch past the claim idle time may have been handed to another consumer.
_KEEP = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


class RedisState:
    """Revocations in Redis: a stream with a consumer group, hashes, a sorted set.

    A job stays pending in the group until acknowledged; a consumer that died (or a job whose
    call failed) leaves it pending, and XAUTOCLAIM hands it to a live consumer once it has
    been idle for `claim_idle` seconds.

    With `min_replicas`, `enqueue` returns only once that many replicas of the master that
    took the jobs have them (Redis WAIT, up to `replica_timeout_ms`): a failover right after
    an accepted revocation then promotes a replica that holds it.
    """

    mode = "redis-stream"

    def __init__(
        self,
        redis: aioredis.Redis,
        consumer: str,
        claim_idle: float = 30.0,
        dead_after: float = DEAD_CONSUMER_IDLE,
        *,
        min_replicas: int = 0,
        replica_timeout_ms: int = 500,
    ) -> None:
        self._redis = redis
        self._min_replicas = min_replicas
        self._replica_timeout_ms = replica_timeout_ms
        self._consumer = consumer
        self._claim_idle_ms = int(claim_idle * 1000)
        self._dead_after_ms = int(dead_after * 1000)
        self._group_ready = False
        self._block = redis.register_script(_BLOCK_MAX)
        self._block_prune = redis.register_script(_BLOCK_PRUNE)
        self._reap = redis.register_script(_REAP)
        self._promote = redis.register_script(_PROMOTE)
        self._keep = redis.register_script(_KEEP)
        self._ack = redis.register_script(_ACK)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._group_ready = True

    async def enqueue(
        self, jobs: list[tuple[str, str]], now_ms: int, *, not_before_ms: int = 0
    ) -> int:
        """XADD every job (one round trip); held back ones ZADD to the delayed set instead.

        With `min_replicas`, the same pipeline ends with WAIT, and fewer replicas having the
        jobs raises `RevocationNotReplicated` (the jobs stay queued on the master).
        """
        if not jobs:
            return 0
        try:
            await self._ensure_group()
            async with self._redis.pipeline(transaction=False) as pipe:
                for token, instance_id in jobs:
                    if not_before_ms > now_ms:
                        member = json.dumps(
                            # A nonce keeps two identical jobs two members.
                            {
                                "token": token,
                                "instance": instance_id,
                                "at": str(now_ms),
                                "nonce": secrets.token_hex(8),
                            },
                            separators=(",", ":"),
                        )
                        pipe.zadd(DELAYED, {member: not_before_ms})
                    else:
                        pipe.xadd(
                            STREAM, {"token": token, "instance": instance_id, "at": str(now_ms)}
                        )
                node = self._wait_in(pipe) if self._min_replicas else None
                results = await pipe.execute()
            if self._min_replicas:
                self._check_replicated(int(results[-1]), node)
        except RedisError as err:
            raise StoreUnavailable("cannot queue the revocation: Redis is unreachable") from err
        return len(jobs)

    def _wait_in(self, pipe: Any) -> str | None:
        """Append WAIT to `pipe`; the cluster node it goes to (None: a single server).

        WAIT counts the replicas that have this connection's last write, so it must travel
        on the connection that took the jobs: a single server's pipeline is one connection;
        a cluster pipeline sends each node's commands on one connection, and WAIT (keyless)
        is sent to the node owning the stream's slot, where the XADDs and ZADDs go.
        """
        args = ("WAIT", self._min_replicas, self._replica_timeout_ms)
        if not isinstance(self._redis, aioredis.RedisCluster):
            pipe.execute_command(*args)
            return None
        owner = self._stream_owner()
        pipe.execute_command(*args, target_nodes=owner)
        return str(owner.name)

    def _stream_owner(self) -> Any:
        """The cluster node serving the stream's slot, as this client's slot map says."""
        try:
            owner = cast(aioredis.RedisCluster, self._redis).get_node_from_key(STREAM)
        except RedisClusterException as err:  # a slot without a node: not a RedisError
            raise ClusterError(str(err)) from err
        if owner is None:
            raise ClusterError("no node serves the revocation stream's slot")
        return owner

    def _check_replicated(self, acknowledged: int, node: str | None) -> None:
        """Raise `RevocationNotReplicated` unless enough replicas acknowledged the jobs."""
        if node is not None and self._stream_owner().name != node:
            # The slot moved while the jobs were written (a failover): they went to the new
            # owner by redirection, and WAIT's count, from the old one, is not theirs.
            acknowledged = 0
        if acknowledged < self._min_replicas:
            raise RevocationNotReplicated(
                f"the revocation is queued, but {acknowledged} of the "
                f"{self._min_replicas} Redis replica(s) required confirmed it within "
                f"{self._replica_timeout_ms} ms; retry (a token queued twice is revoked once)",
                extra={"replicas": acknowledged, "required": self._min_replicas},
            )

    async def promote_due(self, now_ms: int) -> int:
        """One script: the due delayed jobs move to the stream (every worker may run it)."""
        try:
            moved = await self._promote(keys=[STREAM, DELAYED], args=[now_ms, PROMOTE_BATCH])
        except RedisError as err:
            raise StoreUnavailable(
                "cannot move the delayed revocations: Redis is unreachable"
            ) from err
        return int(moved)

    def _jobs(self, entries: Iterable[Any], *, redelivered: bool = False) -> list[Job]:
        jobs = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            data = {_text(k): _text(v) for k, v in fields.items()}
            jobs.append(
                Job(_text(entry_id), data["token"], data["instance"], int(data["at"]), redelivered)
            )
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
        stale = self._jobs(claimed[1], redelivered=True)
        deleted = claimed[2] if len(claimed) > 2 else []
        if deleted:
            await self._redis.xack(STREAM, GROUP, *deleted)
        if stale:
            return stale
        fresh: Any = await self._redis.xreadgroup(
            GROUP, self._consumer, {STREAM: ">"}, count=count, block=int(wait * 1000)
        )
        return self._jobs(entry for _stream, entries in fresh or [] for entry in entries)

    async def keep(self, job: Job) -> bool:
        """XCLAIM the job afresh if XPENDING still names this consumer as its holder."""
        try:
            kept = await self._keep(keys=[STREAM], args=[GROUP, self._consumer, job.id])
        except RedisError as err:
            raise StoreUnavailable(
                "cannot read the revocation queue: Redis is unreachable"
            ) from err
        return bool(kept)

    async def carried(self, job: Job) -> bool:
        """ZSCORE of the token's hash among the tokens carried lately (a mark past its day
        counts until the next `ack` prunes it: the token is revoked either way)."""
        try:
            return await self._redis.zscore(CARRIED, token_hash(job.token)) is not None
        except RedisError as err:
            raise StoreUnavailable(
                "cannot read the revocation queue: Redis is unreachable"
            ) from err

    async def ack(self, job: Job) -> None:
        """XACK, XDEL and mark the token carried: the job is done (left pending, and retried,
        if Redis fails)."""
        try:
            await self._ack(
                keys=[STREAM, CARRIED],
                args=[GROUP, job.id, token_hash(job.token), CARRIED_RETENTION_MS],
            )
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
            delayed = await self._redis.zcard(DELAYED)
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
            "delayed": int(delayed),
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
        """HGETALL of every block hash."""
        found: dict[str, dict[str, int]] = {}
        try:
            for scope, key in BLOCKS.items():
                raw = await self._redis.hgetall(key)
                found[scope] = {_text(k): int(v) for k, v in raw.items()}
        except RedisError as err:
            raise StoreUnavailable("cannot read the blocks: Redis is unreachable") from err
        return found

    async def blocks_of(self, wanted: Mapping[str, tuple[str, ...]]) -> dict[str, dict[str, int]]:
        """HMGET of the names in each block hash: one round trip (a pipeline) for them all."""
        asked = [(scope, names) for scope, names in wanted.items() if names]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for scope, names in asked:
                    pipe.hmget(BLOCKS[scope], list(names))
                replies = await pipe.execute()
        except RedisError as err:
            raise StoreUnavailable("cannot read the blocks: Redis is unreachable") from err
        found: dict[str, dict[str, int]] = {}
        for (scope, names), values in zip(asked, replies, strict=True):
            found[scope] = {
                name: int(value)
                for name, value in zip(names, values, strict=True)
                if value is not None
            }
        return found

    async def prune_blocks(self, older_than_ms: int) -> int:
        """HSCAN every block hash; delete (compare-and-delete) the entries made before."""
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
