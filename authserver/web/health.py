"""Liveness, readiness and the OpenAPI description."""

from __future__ import annotations

from aiohttp import web

from authserver import keys
from authserver.web.openapi import openapi_document


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: policy and keys loaded, store reachable, circuit not open, not shutting down."""
    app = request.app
    checks: dict[str, str] = {}
    checks["policy"] = "ok" if app[keys.POLICY].current is not None else "not loaded"
    checks["jwtKeys"] = "ok" if app[keys.VERIFIER].ready else "not loaded"
    checks["store"] = "ok" if await app[keys.TOKENS].store.ping() else "unreachable"
    checks["blocklist"] = "ok" if app[keys.REVOKER].blocks_loaded else "not loaded"
    circuit = app[keys.CLOUD].circuit.state
    checks["upstream"] = "ok" if circuit != "open" else "circuit open"
    checks["shutdown"] = "draining" if app[keys.DRAINING].is_set() else "ok"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of every endpoint."""
    return web.json_response(openapi_document())
