"""A JWKS fetched on the shared aiohttp session, refreshed periodically and on an unknown kid."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable

import aiohttp
from yarl import URL

from authserver import background
from authserver.clock import Clock
from authserver.errors import ServiceUnavailable
from authserver.identity.keys import KeySet, VerificationKey, keys_from_jwks
from authserver.identity.model import invalid_token

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10)
RETRY_FIRST_DELAY = 1.0


class JWKSError(Exception):
    """The JWKS could not be fetched or holds no usable key."""


class JWKSSource:
    """The key set of one JWKS URL: one fetch in flight at most, old keys kept on failure."""

    def __init__(
        self,
        url: str,
        algorithms: Iterable[str],
        *,
        session: Callable[[], aiohttp.ClientSession],
        clock: Clock,
        refresh_interval: float,
        cache_ttl: float,
        on_removed: Callable[[frozenset[str]], None],
    ) -> None:
        """Configure; nothing is fetched until `refresh`, `run` or a first `key_for`."""
        self._url = url
        self._safe_url = str(URL(url).with_query(None).with_user(None))
        self._algorithms = tuple(algorithms)
        self._session = session
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._cache_ttl = cache_ttl
        self._on_removed = on_removed
        self._keys: KeySet | None = None
        self._loaded_at = 0.0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[bool] | None = None

    @property
    def ready(self) -> bool:
        """Whether a key set has been loaded at least once."""
        return self._keys is not None

    @property
    def keys(self) -> KeySet | None:
        """The key set in use (None until the first successful load)."""
        return self._keys

    async def key_for(self, alg: str, kid: str | None) -> VerificationKey:
        """The key for a token header; an unknown kid may trigger one rate-limited refresh."""
        keys = self._keys
        if keys is not None:
            found = keys.find(kid, alg)
            if found is not None:
                return found
            if kid is None:
                raise invalid_token(
                    "token has no key id (kid) and the JWKS has no single key for it"
                )
            if kid in keys.kids:
                raise invalid_token("the key named by the token's kid is not for its algorithm")
        await self.refresh(rate_limited=True)
        keys = self._keys
        if keys is None:
            raise ServiceUnavailable(
                "the token signing keys (JWKS) are not available yet", headers={"Retry-After": "5"}
            )
        found = keys.find(kid, alg)
        if found is None:
            raise invalid_token("no trusted key matches the token's key id (kid)")
        return found

    async def refresh(self, *, rate_limited: bool) -> bool:
        """Fetch now, or join the fetch in flight; rate-limited callers may be told no (False)."""
        task = self._inflight
        if task is None:
            now = self._clock.monotonic()
            last = self._last_attempt
            if rate_limited and last is not None and now - last < self._refresh_interval:
                return False
            self._last_attempt = now
            task = asyncio.create_task(self._fetch_and_swap(), name="jwks-fetch")
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        # Shielded: a caller that goes away must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def run(self) -> None:
        """Keep the key set fresh: retry with backoff until loaded, then refresh every TTL."""
        failures = 0 if self.ready else 1
        while True:
            if failures:
                delay = min(RETRY_FIRST_DELAY * 2 ** (failures - 1), self._refresh_interval)
            else:
                due = self._loaded_at + self._cache_ttl - self._clock.monotonic()
                delay = max(due, min(self._cache_ttl, 1.0))
            await self._clock.idle(delay)
            if await self.refresh(rate_limited=False):
                failures = 0
            else:
                failures += 1

    async def close(self) -> None:
        """Cancel a fetch in flight."""
        await background.stop([self._inflight])

    async def _fetch_and_swap(self) -> bool:
        try:
            keys = KeySet(keys_from_jwks(await self._fetch(), self._algorithms))
            if not keys:
                raise JWKSError("no key in the JWKS fits the configured algorithms")
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError, JWKSError) as err:
            state = "keeping the previous keys" if self.ready else "no keys loaded yet"
            log.warning("JWKS fetch from %s failed (%s); %s", self._safe_url, err, state)
            return False
        previous, self._keys = self._keys, keys
        self._loaded_at = self._clock.monotonic()
        log.info(
            "JWKS from %s loaded: %d key(s), kids %s",
            self._safe_url,
            len(keys),
            sorted(kid[:64] for kid in keys.kids),
        )
        if previous is not None:
            removed = previous.refs - keys.refs
            if removed:
                self._on_removed(removed)
        return True

    async def _fetch(self) -> object:
        async with self._session().get(self._url, timeout=FETCH_TIMEOUT) as response:
            if response.status != 200:
                raise JWKSError(f"HTTP {response.status}")
            if (response.content_length or 0) > MAX_JWKS_BYTES:
                raise JWKSError("the JWKS is larger than 1 MiB")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JWKSError("the JWKS is larger than 1 MiB")
        return json.loads(body)
