"""Every typed application key in one place."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from authserver.clock import Clock
from authserver.cloud.client import CloudClient
from authserver.identity import JWTVerifier
from authserver.metrics import Metrics
from authserver.policy.holder import PolicyHolder
from authserver.policy.watch import PolicyWatcher
from authserver.ratelimit import RateLimiter
from authserver.settings import Settings
from authserver.tokens.bus import InvalidationBus
from authserver.tokens.issuer import TokenIssuer
from authserver.tokens.revocation import RevocationWorker, Revoker
from authserver.tokens.service import TokenService

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
CLOUD = web.AppKey("cloud", CloudClient)
VERIFIER = web.AppKey("verifier", JWTVerifier)
POLICY = web.AppKey("policy", PolicyHolder)
TOKENS = web.AppKey("tokens", TokenService)
ISSUER = web.AppKey("issuer", TokenIssuer)
BUS = web.AppKey("bus", InvalidationBus)
REVOKER = web.AppKey("revoker", Revoker)
REVOCATION_WORKER = web.AppKey("revocation_worker", RevocationWorker)
METRICS = web.AppKey("metrics", Metrics)
DRAINING = web.AppKey("draining", asyncio.Event)
POLICY_WATCHER = web.AppKey("policy_watcher", PolicyWatcher)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
# The OpenTelemetry tracer when OTEL_* variables turn tracing on, else None (authserver.tracing).
TRACER: web.AppKey[Tracer | None] = web.AppKey("tracer")
