"""Revocation that is never lost: purge every cache, block old app JWTs, revoke upstream.

An admin's revocation is accepted only once it is durable: the upstream RevokeToken jobs are
in the queue (a Redis stream with a consumer group when Redis is configured; in memory in the
embedded mode, where a restart loses them, as documented), the issued-before block is stored,
and every process was told to drop its cached copies. A background worker drains the queue at
no more than the RevokeToken quota, retrying until the upstream confirms. A job handed out
again (its worker crashed between call and acknowledgement, or the acknowledgement was lost
with a failed-over Redis master) is checked with QueryToken first, so a token is revoked
upstream once; revoking twice would do no harm but spend the scarce RevokeToken quota.

Housekeeping, run by the worker every `MAINTENANCE_INTERVAL` seconds: blocks older than the
block retention are pruned (`Revoker.maintain`), and stream consumers left by processes that
are gone are deleted from the group once nothing is pending on them (`reap_consumers`).
"""

from authserver.tokens.revocation.revoker import (
    BLOCK_RETENTION,
    MAX_TOKEN_LIFE_MS,
    ClientIdsOf,
    RevocationResult,
    Revoker,
)
from authserver.tokens.revocation.state import (
    BLOCKS,
    CLIENT,
    DEAD_CONSUMER_IDLE,
    FAILURES,
    GROUP,
    RECENT_FAILURES,
    REVOKED,
    STREAM,
    SUBJECT,
    Job,
    MemoryState,
    RedisState,
    RevocationState,
)
from authserver.tokens.revocation.worker import MAINTENANCE_INTERVAL, RevocationWorker, Revoke

__all__ = [
    "BLOCKS",
    "BLOCK_RETENTION",
    "CLIENT",
    "DEAD_CONSUMER_IDLE",
    "FAILURES",
    "GROUP",
    "MAINTENANCE_INTERVAL",
    "MAX_TOKEN_LIFE_MS",
    "RECENT_FAILURES",
    "REVOKED",
    "STREAM",
    "SUBJECT",
    "ClientIdsOf",
    "Job",
    "MemoryState",
    "RedisState",
    "RevocationResult",
    "RevocationState",
    "RevocationWorker",
    "Revoke",
    "Revoker",
]
