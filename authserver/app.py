"""create_app(settings): the one place that wires the gateway together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from authserver import keys
from authserver.clock import Clock, SystemClock
from authserver.cloud.circuit import CircuitBreaker
from authserver.cloud.client import CloudClient, make_session
from authserver.cloud.quota import QuotaGovernor
from authserver.identity import JWTVerifier
from authserver.policy_holder import PolicyHolder
from authserver.ratelimit import Limit, RateLimiter, parse_networks
from authserver.redis_conn import open_redis
from authserver.settings import Settings
from authserver.tokens.bus import InvalidationBus
from authserver.tokens.revocation import (
    MemoryState,
    RedisState,
    RevocationState,
    RevocationWorker,
    Revoker,
)
from authserver.tokens.service import TokenService
from authserver.tokens.store import MemoryStore, RedisStore, TokenStore
from authserver.web.observe import setup_operations
from authserver.web.routes import setup_routes

log = logging.getLogger(__name__)
REDIS = web.AppKey("redis", aioredis.Redis)


def create_app(settings: Settings, *, clock: Clock | None = None) -> web.Application:
    """Build the gateway application; resources start and stop with it."""
    # No middleware: every route's handler is wrapped instead (see web.observe.observed).
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[keys.SETTINGS] = settings
    app[keys.CLOCK] = clock or SystemClock()
    app[keys.POLICY] = PolicyHolder.load(settings.policy_file)
    app.cleanup_ctx.append(_http_session)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_services)
    setup_operations(app)
    setup_routes(app)
    return app


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    session = make_session(timeout=app[keys.SETTINGS].request_deadline + 5)
    app[keys.HTTP_SESSION] = session
    yield
    await session.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    url = app[keys.SETTINGS].redis_url
    if url is None:
        yield
        return
    client = await open_redis(url, cluster=app[keys.SETTINGS].redis_cluster)
    app[REDIS] = client
    yield
    # Bounded: a node that stopped answering must not hold up shutdown.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.aclose(), timeout=5.0)


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    clock = app[keys.CLOCK]
    session = app[keys.HTTP_SESSION]
    redis_client = app.get(REDIS)
    governor = QuotaGovernor(
        settings.quota,
        account_limit=settings.account_quota,
        clock=clock,
        redis=redis_client,
        sleep=clock.sleep,
    )
    cloud = CloudClient(
        session,
        settings.credentials,
        endpoint=settings.endpoint,
        iot_endpoint=settings.iot_endpoint,
        ons_endpoint=settings.ons_endpoint,
        region_id=settings.region_id,
        governor=governor,
        circuit=CircuitBreaker(clock=clock),
        clock=clock,
        default_deadline=settings.request_deadline,
    )
    app[keys.CLOUD] = cloud
    verifier = JWTVerifier(settings.jwt, session=session, clock=clock)
    await verifier.start()
    app[keys.VERIFIER] = verifier

    store: TokenStore
    if redis_client is not None:
        store = RedisStore(redis_client, clock)
    else:
        store = MemoryStore(clock, maxsize=settings.token_cache_size)

    limiter = RateLimiter(
        subject=Limit(settings.rate_limit_subject, settings.rate_limit_subject_burst),
        ip=Limit(settings.rate_limit_ip, settings.rate_limit_ip_burst),
        # The budget is set per minute; the buckets count per second.
        mint=Limit(settings.mint_budget / 60, settings.mint_budget_burst),
        clock=clock,
        trusted_proxies=parse_networks(settings.trusted_proxies),
        redis=redis_client,
    )
    app[keys.RATE_LIMITER] = limiter

    async def mint(
        instance_id: str, resources: tuple[str, ...], actions: str, expire_ms: int, budget: float
    ) -> str:
        # Only here, when the upstream is about to be called, is the mint budget charged.
        await limiter.check_shared()
        applied = await cloud.apply_token(
            instance_id, resources, actions, expire_ms, deadline=budget
        )
        return applied.token

    tokens = TokenService(
        mint,
        store,
        instance_id=settings.instance_id,
        access_key_id=settings.credentials.access_key_id,
        clock=clock,
        refresh_margin=settings.refresh_margin,
        # A lock only has to outlive one minting call, which the deadline bounds; a holder
        # that died frees the key this soon.
        lock_ttl=settings.request_deadline + 2.0,
        l1_size=settings.token_cache_size,
        answer_cache_size=settings.answer_cache_size,
        answer_cache_bytes=settings.answer_cache_bytes,
    )
    app[keys.TOKENS] = tokens

    bus = InvalidationBus(redis_client, clock=clock)
    state: RevocationState
    if redis_client is not None:
        state = RedisState(redis_client, bus.origin, claim_idle=settings.revocation_claim_idle)
    else:
        state = MemoryState()
    app[keys.BUS] = bus
    revoker = Revoker(
        tokens,
        state,
        bus,
        clock=clock,
        client_ids=app[keys.POLICY].client_ids,
        block_retention=settings.revocation_block_retention,
    )
    app[keys.REVOKER] = revoker
    await bus.start()

    async def revoke(instance_id: str, token: str) -> None:
        await cloud.revoke_token(instance_id, token, deadline=30.0)

    worker = RevocationWorker(state, revoke, clock=clock, maintain=revoker.maintain)
    app[keys.REVOCATION_WORKER] = worker
    worker.start()
    log.info(
        "gateway ready: instance %s, endpoint %s, store %s, policy %s",
        settings.instance_id,
        settings.endpoint,
        "redis" if redis_client is not None else "memory",
        app[keys.POLICY].current.version_id,
    )
    yield
    await worker.stop()
    await tokens.close()
    await bus.close()
    await verifier.close()
