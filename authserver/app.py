"""create_app(settings): the one place that wires the gateway together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiohttp import web

from authserver import __version__, appkeys, tracing
from authserver.clock import Clock, SystemClock
from authserver.cloud.circuit import CircuitBreaker
from authserver.cloud.client import CloudClient, make_session
from authserver.cloud.quota import QuotaGovernor
from authserver.identity import JWTVerifier
from authserver.policy.holder import PolicyHolder
from authserver.policy.model import Policy
from authserver.policy.watch import PolicyWatcher
from authserver.ratelimit import Limit, RateLimiter
from authserver.redis_conn import open_redis
from authserver.settings import Settings, parse_networks
from authserver.tokens.bus import InvalidationBus
from authserver.tokens.issuer import TokenIssuer
from authserver.tokens.narrowing import revoke_narrowed
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

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)
REDIS = web.AppKey("redis", aioredis.Redis)
# The longest a revocation worker's upstream call may take, quota wait included.
REVOKE_DEADLINE = 30.0


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    """Build the gateway application; resources start and stop with it.

    `tracer_provider` (tests) traces without OTEL_* variables; the caller shuts it down.
    """
    # No middleware: every route's handler is wrapped instead (see web.observe.observed).
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[appkeys.SETTINGS] = settings
    app[appkeys.CLOCK] = clock or SystemClock()
    app[appkeys.POLICY] = PolicyHolder.load(
        settings.policy_file,
        plan_cache_size=settings.plan_cache_size,
        plan_cache_bytes=settings.plan_cache_bytes,
    )
    app[appkeys.TRACER] = None
    # One context per resource, in start order; they stop in the reverse order.
    app.cleanup_ctx.extend(
        (
            functools.partial(_tracing, provider=tracer_provider),
            _http_session,
            _redis,
            _verifier,
            _cloud,
            _limiter,
            _tokens,
            _revocation,
            _issuer,
            _revocation_worker,
            _policy_watch,
        )
    )
    setup_operations(app)
    setup_routes(app)
    app.on_startup.append(_log_ready)  # on_startup runs after every context has started
    return app


async def _tracing(app: web.Application, *, provider: TracerProvider | None) -> AsyncIterator[None]:
    """The tracer when tracing is on (OTEL_* variables or a given provider); first up."""
    exporters = app[appkeys.SETTINGS].trace_exporters
    own = provider is None and bool(exporters)
    if own:
        provider = tracing.provider_from_env(exporters)
    if provider is not None:
        app[appkeys.TRACER] = provider.get_tracer(tracing.INSTRUMENTATION, __version__)
    yield
    if own and provider is not None:
        # Flushes the batch of spans still queued; off the loop, the exporter blocks.
        await asyncio.to_thread(provider.shutdown)


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    session = make_session(timeout=app[appkeys.SETTINGS].request_deadline + 5)
    app[appkeys.HTTP_SESSION] = session
    yield
    await session.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    url = app[appkeys.SETTINGS].redis_url
    if url is None:
        yield
        return
    client = await open_redis(url, cluster=app[appkeys.SETTINGS].redis_cluster)
    app[REDIS] = client
    yield
    # Bounded: a node that stopped answering must not hold up shutdown.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.aclose(), timeout=5.0)


async def _verifier(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    verifier = JWTVerifier(
        settings.jwt, session=app[appkeys.HTTP_SESSION], clock=app[appkeys.CLOCK]
    )
    await verifier.start()
    app[appkeys.VERIFIER] = verifier
    yield
    await verifier.close()


async def _cloud(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    clock = app[appkeys.CLOCK]
    governor = QuotaGovernor(
        settings.quota,
        account_limit=settings.account_quota,
        clock=clock,
        redis=app.get(REDIS),
        fallback_fraction=settings.quota_share,
    )
    app[appkeys.CLOUD] = CloudClient(
        app[appkeys.HTTP_SESSION],
        settings.credentials,
        endpoint=settings.endpoint,
        iot_endpoint=settings.iot_endpoint,
        ons_endpoint=settings.ons_endpoint,
        region_id=settings.region_id,
        governor=governor,
        circuit=CircuitBreaker(clock=clock),
        clock=clock,
        default_deadline=settings.request_deadline,
        tracer=app[appkeys.TRACER],
    )
    yield  # the HTTP session it uses is closed by its own context


async def _limiter(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    app[appkeys.RATE_LIMITER] = RateLimiter(
        subject=Limit(settings.rate_limit_subject, settings.rate_limit_subject_burst),
        ip=Limit(settings.rate_limit_ip, settings.rate_limit_ip_burst),
        # The budget is set per minute; the buckets count per second.
        mint=Limit(settings.mint_budget / 60, settings.mint_budget_burst),
        clock=app[appkeys.CLOCK],
        trusted_proxies=parse_networks(settings.trusted_proxies),
        redis=app.get(REDIS),
        ipv6_prefix=settings.rate_limit_ipv6_prefix,
    )
    yield


async def _tokens(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    clock = app[appkeys.CLOCK]
    redis_client = app.get(REDIS)
    cloud = app[appkeys.CLOUD]
    limiter = app[appkeys.RATE_LIMITER]
    store: TokenStore
    if redis_client is not None:
        store = RedisStore(redis_client, clock)
    else:
        store = MemoryStore(
            clock, maxsize=settings.token_cache_size, max_bytes=settings.token_cache_bytes
        )
    tracer = app[appkeys.TRACER]
    if tracer is not None:
        store = tracing.TracedStore(store, tracer, "redis" if redis_client else "memory")

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
        l1_bytes=settings.token_cache_bytes,
        sharing=settings.token_sharing,
    )
    app[appkeys.TOKENS] = tokens
    yield
    await tokens.close()


async def _revocation(app: web.Application) -> AsyncIterator[None]:
    """The invalidation bus and the revoker (blocks, purges) that speaks through it."""
    settings = app[appkeys.SETTINGS]
    redis_client = app.get(REDIS)
    bus = InvalidationBus(redis_client, clock=app[appkeys.CLOCK])
    state: RevocationState
    if redis_client is not None:
        state = RedisState(
            redis_client,
            bus.origin,
            claim_idle=settings.revocation_claim_idle,
            min_replicas=settings.revocation_min_replicas,
            replica_timeout_ms=settings.revocation_replica_timeout,
        )
    else:
        state = MemoryState()
    app[appkeys.BUS] = bus
    app[appkeys.REVOKER] = Revoker(
        app[appkeys.TOKENS],
        state,
        bus,
        clock=app[appkeys.CLOCK],
        client_ids=app[appkeys.POLICY].client_ids,
        block_retention=settings.revocation_block_retention,
        revocable_claims=settings.revocable_claims,
    )
    await bus.start()
    yield
    await bus.close()


async def _issuer(app: web.Application) -> AsyncIterator[None]:
    """The token path's owner: answers and repeats in front of the token service."""
    settings = app[appkeys.SETTINGS]
    app[appkeys.ISSUER] = TokenIssuer(
        app[appkeys.TOKENS],
        holder=app[appkeys.POLICY],
        verifier=app[appkeys.VERIFIER],
        revoker=app[appkeys.REVOKER],
        limiter=app[appkeys.RATE_LIMITER],
        bus=app[appkeys.BUS],
        clock=app[appkeys.CLOCK],
        request_deadline=settings.request_deadline,
        answer_cache_size=settings.answer_cache_size,
        answer_cache_bytes=settings.answer_cache_bytes,
        revocable_claims=settings.revocable_claims,
    )
    yield


async def _revocation_worker(app: web.Application) -> AsyncIterator[None]:
    """The worker that carries accepted revocations to the upstream (RevokeToken)."""
    cloud = app[appkeys.CLOUD]
    revoker = app[appkeys.REVOKER]

    # Within the claim idle time, quota wait included: past it, another process takes the
    # job over and revokes the token a second time.
    deadline = min(REVOKE_DEADLINE, app[appkeys.SETTINGS].revocation_claim_idle / 2)

    async def revoke(instance_id: str, token: str) -> None:
        await cloud.revoke_token(instance_id, token, deadline=deadline)

    async def still_valid(instance_id: str, token: str) -> bool:
        return await cloud.query_token(instance_id, token, deadline=deadline)

    worker = RevocationWorker(
        revoker.state,
        revoke,
        clock=app[appkeys.CLOCK],
        maintain=revoker.maintain,
        still_valid=still_valid,
    )
    app[appkeys.REVOCATION_WORKER] = worker
    worker.start()
    yield
    await worker.stop()


async def _policy_watch(app: web.Application) -> AsyncIterator[None]:
    """Hot reload of the policy file; a narrowing revokes the tokens it no longer allows."""
    settings = app[appkeys.SETTINGS]

    async def on_change(_old: Policy, new: Policy) -> int:
        return await revoke_narrowed(app[appkeys.TOKENS], app.get(appkeys.REVOKER), new)

    watcher = PolicyWatcher(
        app[appkeys.POLICY],
        interval=settings.policy_poll_interval,
        on_change=on_change,
        clock=app[appkeys.CLOCK],
    )
    app[appkeys.POLICY_WATCHER] = watcher
    await watcher.start()
    yield
    await watcher.close()


async def _log_ready(app: web.Application) -> None:
    settings = app[appkeys.SETTINGS]
    log.info(
        "gateway ready: instance %s, endpoint %s, store %s, policy %s",
        settings.instance_id,
        settings.endpoint,
        "redis" if app.get(REDIS) is not None else "memory",
        app[appkeys.POLICY].current.version_id,
    )
