"""Liveness, readiness and the OpenAPI description."""

from __future__ import annotations

import asyncio

from aiohttp import web

from authserver import appkeys
from authserver.web.openapi import openapi_document

# Well under the probe's timeoutSeconds (2 in deploy/base): a Redis that stopped answering
# must not turn into a probe timeout, which the kubelet counts as a failure.
STORE_PING_TIMEOUT = 0.5
# What this pod alone decides; each of these failing makes /readyz answer 503.
LOCAL_CHECKS = ("jwtKeys", "blocklist", "shutdown")


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def _store_reachable(app: web.Application) -> bool:
    try:
        return await asyncio.wait_for(app[appkeys.TOKENS].store.ping(), STORE_PING_TIMEOUT)
    except TimeoutError:
        return False


async def readyz(request: web.Request) -> web.Response:
    """Ready unless something local to this pod is missing: JWT keys, the blocklist, draining.

    Redis and the upstream are shared by every replica: failing readiness on them would take
    every pod out of the Service at once, while each could still serve its cached answers.
    Their state is reported in `checks` (and in metrics) without failing readiness.
    """
    app = request.app
    circuit = app[appkeys.CLOUD].circuit.state
    checks = {
        "jwtKeys": "ok" if app[appkeys.VERIFIER].ready else "not loaded",
        "blocklist": "ok" if app[appkeys.REVOKER].blocks_loaded else "not loaded",
        "shutdown": "draining" if app[appkeys.DRAINING].is_set() else "ok",
        "store": "ok" if await _store_reachable(app) else "unreachable",
        "upstream": "ok" if circuit != "open" else "circuit open",
    }
    ready = all(checks[name] == "ok" for name in LOCAL_CHECKS)
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of every endpoint."""
    return web.json_response(openapi_document())
