"""Operations on the web side: request ids and metrics per request, /metrics, draining, reload.

`observed(handler)` wraps every route's handler (the app has no middleware): it turns errors
into problem+json (`web.middlewares.error_response`) and it gives every request an id (the
caller's `X-Request-Id` when sane, else a new one) that is returned in the response and
attached to every log record of the request, and it counts the request by route template
and status. A fallback route, registered last, does the same for paths no route matches.
It writes no per-request log line above DEBUG; a 5xx answer is logged at WARNING.

`setup_operations(app)` wires the rest: the app's metrics registry, the draining flag that
turns readiness false at SIGTERM, and the policy watcher that hot-reloads the policy file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from authserver import keys, logs
from authserver.metrics import CONTENT_TYPE, Metrics, RequestMetrics, Sources, Stats
from authserver.policy.model import Policy
from authserver.policy_watch import PolicyWatcher, narrowed
from authserver.web.middlewares import error_response

log = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"


def route_label(request: web.Request) -> str:
    """The route template (`/v1/admin/subjects/{subject}/tokens`), never the raw path."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    return resource.canonical


def observed(handler: Handler, *, label: str | None = None) -> Handler:
    """`handler` with request ids, log context, problem+json errors and request metrics.

    Every route is registered through this instead of an app middleware: aiohttp wraps an
    app with any middleware in a second layer of its own, and the two cost a cached token
    request more than a tenth of its rate. `label` names the route in metrics and logs; by
    default its template, read once. A redirect is passed on, with the request id.
    """
    route: str | None = label
    # Read at the first request, once the app exists: (draining flag, request metrics).
    app_state: tuple[asyncio.Event, RequestMetrics] | None = None

    @functools.wraps(handler)
    async def observe(request: web.Request) -> web.StreamResponse:
        nonlocal route, app_state
        started = perf_counter()
        if route is None or app_state is None:
            route = route_label(request) if route is None else route
            app = request.app
            app_state = (app[keys.DRAINING], app[keys.METRICS].requests)
        draining, metrics = app_state
        headers = request.headers
        request_id = logs.request_id_from(headers.get(logs.REQUEST_ID_HEADER))
        method = request.method
        context = logs.RequestContext(request_id, method, route, headers.get("Authorization"))
        reset = logs.CURRENT.set(context)
        status = 500
        try:
            try:
                response = await handler(request)
            except web.HTTPException as err:
                if err.status >= 400:
                    response = error_response(request, err)
                else:  # a redirect is an answer, not an error
                    status = err.status
                    err.headers[logs.REQUEST_ID_HEADER] = request_id
                    raise
            except Exception as err:  # GatewayError and the unexpected: problem+json, no trace
                response = error_response(request, err)
            status = response.status
            if not response.prepared:
                response.headers[logs.REQUEST_ID_HEADER] = request_id
                if draining.is_set():
                    # Clients stop reusing connections to a pod that is about to go away.
                    response.force_close()
            return response
        finally:
            elapsed = perf_counter() - started
            metrics.observe(route, method, status, elapsed)
            if status >= 500:
                log.warning(
                    "%s %s answered %d",
                    method,
                    route,
                    status,
                    extra={"status": status, "durationMs": round(elapsed * 1000, 3)},
                )
            elif log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s answered %d",
                    method,
                    route,
                    status,
                    extra={"status": status, "durationMs": round(elapsed * 1000, 3)},
                )
            logs.CURRENT.reset(reset)

    return observe


async def _unmatched(request: web.Request) -> web.StreamResponse:
    """No route for this path (404), or none for this method on it (405 with Allow)."""
    allowed: set[str] = set()
    fallback = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not fallback:
            _match, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def add_fallback_route(app: web.Application) -> None:
    """Last: answer what no route matches as problem+json, with a request id, counted."""
    # [\s\S], not `.`: a path may hold a newline (%0A), and `.` would leave it to aiohttp.
    app.router.add_route("*", r"/{tail:[\s\S]*}", observed(_unmatched, label=UNMATCHED))


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's metrics (unauthenticated: restrict it)."""
    app = request.app
    revocation: Stats | None = None
    revoker = app.get(keys.REVOKER)
    if revoker is not None:
        try:
            revocation = dict(await revoker.status())
        except Exception:
            log.warning("metrics: the revocation queue status is unavailable", exc_info=True)
        else:
            worker = app.get(keys.REVOCATION_WORKER)
            if worker is not None:
                revocation["done"] = worker.done
                revocation["failures"] = worker.failures
    metrics = app[keys.METRICS]
    # Read synchronously right below, with no await in between: concurrent scrapes are safe.
    metrics.components.sources.revocation = lambda: revocation
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _token_stats(app: web.Application) -> Stats | None:
    """Cache lookups per layer, from the token service's (and verifier's) counters."""
    tokens = app.get(keys.TOKENS)
    if tokens is None:
        return None
    layers: dict[str, dict[str, int]] = {}
    answers = getattr(tokens, "answers", None)  # finished answers, in front of everything
    answer_hits = getattr(answers, "hits", None)
    if isinstance(answer_hits, int):
        layers["answer"] = {"hits": answer_hits, "misses": int(getattr(answers, "misses", 0))}
    hits: Any = getattr(tokens, "hits", None)
    misses = int(getattr(tokens, "misses", 0))
    if isinstance(hits, dict):
        store_hits = int(hits.get("store", 0))
        if "l1" in hits and tokens.store.shared:
            l1_hits = int(hits["l1"])
            layers["l1"] = {"hits": l1_hits, "misses": store_hits + misses}
        layers["store"] = {"hits": store_hits, "misses": misses}
    elif isinstance(hits, int):
        layers["store"] = {"hits": hits, "misses": misses}
    verifier = app.get(keys.VERIFIER)
    jwt_hits = getattr(verifier, "hits", None)
    if isinstance(jwt_hits, int):
        layers["jwt"] = {"hits": jwt_hits, "misses": int(getattr(verifier, "misses", 0))}
    return {"layers": layers, "minted": int(getattr(tokens, "minted", 0))}


def _sources(app: web.Application) -> Sources:
    def cloud() -> Stats | None:
        client = app.get(keys.CLOUD)
        return None if client is None else client.stats()

    def quota() -> Stats | None:
        client = app.get(keys.CLOUD)
        return None if client is None else client.governor.stats()

    def policy() -> Stats | None:
        watcher = app.get(keys.POLICY_WATCHER)
        if watcher is not None:
            return watcher.stats()
        return {"version": app[keys.POLICY].current.version_id}

    return Sources(tokens=lambda: _token_stats(app), cloud=cloud, quota=quota, policy=policy)


def reload_policy(app: web.Application, reason: str = "SIGHUP") -> None:
    """Force a policy reload now (the SIGHUP handler); a no-op before start-up."""
    watcher = app.get(keys.POLICY_WATCHER)
    if watcher is None:
        log.warning("policy reload asked (%s) before the watcher started; ignored", reason)
        return
    watcher.request_reload(reason)


def start_draining(app: web.Application) -> None:
    """Turn readiness false (SIGTERM): the ingress stops routing here, requests still served."""
    if not app[keys.DRAINING].is_set():
        log.warning("draining: readiness is now false; still serving until shutdown")
        app[keys.DRAINING].set()


async def revoke_narrowed(app: web.Application, old: Policy, new: Policy) -> int:
    """Revoke the cached tokens that grant more than the new policy allows; how many."""
    tokens = app[keys.TOKENS]
    # Every process sweeps when it switches: a replica still on the old policy may mint a
    # wide token until its own watcher sees the change, and its own sweep then catches it.
    # Records revoked by an earlier sweeper are gone from the shared store already.
    doomed = await narrowed(new, tokens.store.all_tokens())
    if not doomed:
        return 0
    revoker = app.get(keys.REVOKER)
    if revoker is None:
        log.error("policy narrowed %d cached token(s) but no revoker is configured", len(doomed))
        return 0
    await revoker.revoke_records(doomed)
    log.warning(
        "policy %s narrowed grants: revoked %d cached token(s) of %d subject(s)",
        new.version_id,
        len(doomed),
        len({record.subject for _key, record in doomed}),
    )
    return len(doomed)


async def _policy_watch(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]

    async def on_change(old: Policy, new: Policy) -> int:
        return await revoke_narrowed(app, old, new)

    watcher = PolicyWatcher(
        app[keys.POLICY],
        interval=settings.policy_poll_interval,
        on_change=on_change,
        clock=app[keys.CLOCK],
    )
    app[keys.POLICY_WATCHER] = watcher
    await watcher.start()
    yield
    await watcher.close()


def setup_operations(app: web.Application) -> None:
    """Metrics, the draining flag and the policy watcher; call after the services' contexts."""
    app[keys.METRICS] = Metrics(_sources(app))
    app[keys.DRAINING] = asyncio.Event()
    app.cleanup_ctx.append(_policy_watch)
