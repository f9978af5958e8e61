"""The revocation worker's once-only rules on the in-memory queue: no Redis, no timing."""

from __future__ import annotations

from collections import Counter

from authserver.clock import SystemClock
from authserver.cloud.errors import UpstreamThrottled, UpstreamUnavailable
from authserver.tokens.revocation import MemoryState, RevocationWorker
from tests.helpers import eventually


async def test_a_retried_job_whose_query_is_throttled_waits_instead_of_revoking_again() -> None:
    state = MemoryState(retry_delay=0.0)
    upstream: Counter[str] = Counter()  # RevokeToken calls that reached the upstream
    queries: list[str] = []

    async def revoke(_instance: str, token: str) -> None:
        upstream[token] += 1
        if upstream[token] == 1:
            raise UpstreamUnavailable("RevokeToken: the answer was lost on the way back")

    async def still_valid(_instance: str, token: str) -> bool:
        queries.append(token)
        if len(queries) == 1:
            raise UpstreamThrottled("QueryToken: no quota left now", retry_after=1.0)
        return upstream[token] == 0

    worker = RevocationWorker(
        state, revoke, clock=SystemClock(), idle_wait=0.01, retry_pause=0.0, still_valid=still_valid
    )
    await state.enqueue([("tok-1", "post-cn-test")], 0)
    worker.start()
    try:

        async def drained() -> bool:
            return (await state.status(0))["depth"] == 0

        await eventually(drained)
        # The retry asked first; asked again once the query was possible, it found the token
        # revoked by the call whose answer was lost, and revoked nothing more.
        assert upstream == {"tok-1": 1}
        assert queries == ["tok-1", "tok-1"]
        assert worker.already_revoked == 1
    finally:
        await worker.stop()
