"""Operations on the web side: request ids and metrics per request, /metrics, draining, reload.

`observed(handler)` wraps every route's handler (the app has no middleware): it turns errors
into problem+json (`web.problem.error_response`) and it gives every request an id (the
caller's `X-Request-Id` when sane, else a new one) that is returned in the response and
attached to every log record of the request, and it counts the request by route template
and status. A fallback route, registered last, does the same for paths no route matches.
It writes no per-request log line above DEBUG; a 5xx answer is logged at WARNING. A client
that goes away mid-request (typically mid-body) is no server error: counted with status 499
(the client closed the request), logged at DEBUG.

`ProtocolLog` is aiohttp's own server log: a request its parser refuses (a header line over
the limit, a malformed request line) is answered 400 by aiohttp before any handler, and the
record aiohttp writes quotes the offending bytes (the start of a JWT); it is replaced by
one that names the reason only, and counted.

`setup_operations(app)` wires the rest: the app's metrics registry, the draining flag that
turns readiness false at SIGTERM, and the policy watcher that hot-reloads the policy file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from time import perf_counter
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
)
from aiohttp.typedefs import Handler

from authserver import appkeys, logs
from authserver.errors import RequestTimeout
from authserver.metrics import CONTENT_TYPE, Metrics, RequestMetrics, Sources, Stats
from authserver.web.problem import error_response

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from authserver.tracing import RequestSpan

log = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"
# nginx's "client closed request": the client left before the answer; nobody received it.
CLIENT_CLOSED = 499


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
    # Read at the first request, once the app exists: (draining flag, request metrics, the
    # tracer or None when tracing is off).
    app_state: tuple[asyncio.Event, RequestMetrics, Tracer | None] | None = None

    @functools.wraps(handler)
    async def observe(request: web.Request) -> web.StreamResponse:
        nonlocal route, app_state
        started = perf_counter()
        if route is None or app_state is None:
            route = route_label(request) if route is None else route
            app = request.app
            app_state = (app[appkeys.DRAINING], app[appkeys.METRICS].requests, app[appkeys.TRACER])
        draining, metrics, tracer = app_state
        headers = request.headers
        request_id = logs.request_id_from(headers.get(logs.REQUEST_ID_HEADER))
        method = request.method
        context = logs.RequestContext(request_id, method, route, headers.get("Authorization"))
        reset = logs.CURRENT.set(context)
        span = None if tracer is None else _request_span(tracer, request, route)
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
            except ConnectionError as err:
                if not _client_gone(request):
                    response = error_response(request, err)  # ours (unexpected): a 500
                else:
                    status = CLIENT_CLOSED
                    log.debug("%s %s: the client went away mid-request", method, route)
                    return web.Response(status=CLIENT_CLOSED)  # nobody left to read it
            except Exception as err:  # GatewayError and the unexpected: problem+json, no trace
                response = error_response(request, err)
            status = response.status
            if not response.prepared:
                response.headers[logs.REQUEST_ID_HEADER] = request_id
                if draining.is_set() or status == RequestTimeout.status:
                    # Clients stop reusing connections to a pod that is about to go away; and
                    # after a body that came too slowly the rest of it may still be coming.
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
            if span is not None:
                span.end(status)
            logs.CURRENT.reset(reset)

    return observe


def _request_span(tracer: Tracer, request: web.Request, route: str) -> RequestSpan:
    """The request's SERVER span (authserver.tracing); only called when tracing is on."""
    from authserver.tracing import RequestSpan

    url = request.url
    return RequestSpan(
        tracer,
        request.method,
        route,
        # A path no route matched, or a catch-all's, is the caller's free text: not recorded.
        None if route == UNMATCHED or "{tail" in route else request.path,
        request.scheme,
        url.host,
        url.port,
        request.version,
        request.headers,
    )


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log (its `logger`), without the bytes of requests its parser refused.

    aiohttp logs such a request at ERROR with the parser's exception, whose message quotes
    up to 100 bytes of the offending line: the start of a JWT when the Authorization header
    is too long. This logs the reason at INFO instead and counts it; a client's malformed
    request is not a server error. Everything else aiohttp logs passes unchanged.
    """

    def __init__(self, metrics: RequestMetrics) -> None:
        super().__init__(logging.getLogger("authserver.http"), {})
        self._metrics = metrics

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log as aiohttp asked, unless the record is about a request its parser refused."""
        err = kwargs.get("exc_info")
        if err is True:
            err = sys.exc_info()[1]
        elif isinstance(err, tuple):
            err = err[1]
        if isinstance(err, HttpProcessingError):
            reason = _PARSER_REASONS.get(type(err), "malformed")
            self._metrics.malformed(reason)
            self.logger.info(
                "refused a malformed request (%s): answered %d before any route",
                reason,
                err.code or 400,
                extra={"reason": reason},
            )
            return
        super().log(level, msg, *args, **kwargs)


_PARSER_REASONS: dict[type[HttpProcessingError], str] = {
    LineTooLong: "line_too_long",
    BadHttpMethod: "bad_request_line",
    BadStatusLine: "bad_request_line",
    InvalidHeader: "invalid_header",
}


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
    revoker = app.get(appkeys.REVOKER)
    if revoker is not None:
        try:
            revocation = dict(await revoker.status())
        except Exception:
            log.warning("metrics: the revocation queue status is unavailable", exc_info=True)
        else:
            worker = app.get(appkeys.REVOCATION_WORKER)
            if worker is not None:
                revocation["done"] = worker.done
                revocation["failures"] = worker.failures
    metrics = app[appkeys.METRICS]
    # Read synchronously right below, with no await in between: concurrent scrapes are safe.
    metrics.components.sources.revocation = lambda: revocation
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _token_stats(app: web.Application) -> Stats | None:
    """Cache lookups per layer, from the token service's (and verifier's) counters."""
    tokens = app.get(appkeys.TOKENS)
    if tokens is None:
        return None
    layers: dict[str, dict[str, int]] = {}
    issuer = app.get(appkeys.ISSUER)
    answers = getattr(issuer, "answers", None)  # finished answers, in front of everything
    answer_hits = getattr(answers, "hits", None)
    if isinstance(answer_hits, int):
        layers["answer"] = {"hits": answer_hits, "misses": int(getattr(answers, "misses", 0))}
    extra: dict[str, int] = {}
    answer_bytes = getattr(answers, "bytes", None)
    if isinstance(answer_bytes, int):
        extra["answer_bytes"] = answer_bytes
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
    verifier = app.get(appkeys.VERIFIER)
    if verifier is not None:  # read typed, not by getattr: a missing counter must not hide
        layers["jwt"] = {"hits": verifier.hits, "misses": verifier.misses}
    return {"layers": layers, "minted": int(getattr(tokens, "minted", 0)), **extra}


def _sources(app: web.Application) -> Sources:
    def cloud() -> Stats | None:
        client = app.get(appkeys.CLOUD)
        return None if client is None else client.stats()

    def quota() -> Stats | None:
        client = app.get(appkeys.CLOUD)
        return None if client is None else client.governor.stats()

    def policy() -> Stats | None:
        watcher = app.get(appkeys.POLICY_WATCHER)
        if watcher is not None:
            return watcher.stats()
        return {"version": app[appkeys.POLICY].current.version_id}

    def limits() -> Stats | None:
        limiter = app.get(appkeys.RATE_LIMITER)
        return None if limiter is None else {"refused": dict(limiter.refused)}

    return Sources(
        tokens=lambda: _token_stats(app), cloud=cloud, quota=quota, policy=policy, limits=limits
    )


def reload_policy(app: web.Application, reason: str = "SIGHUP") -> None:
    """Force a policy reload now (the SIGHUP handler); a no-op before start-up."""
    watcher = app.get(appkeys.POLICY_WATCHER)
    if watcher is None:
        log.warning("policy reload asked (%s) before the watcher started; ignored", reason)
        return
    watcher.request_reload(reason)


def start_draining(app: web.Application) -> None:
    """Turn readiness false (SIGTERM): the ingress stops routing here, requests still served."""
    if not app[appkeys.DRAINING].is_set():
        log.info("draining: readiness is now false; still serving until shutdown")
        app[appkeys.DRAINING].set()


def setup_operations(app: web.Application) -> None:
    """Metrics and the draining flag."""
    app[appkeys.METRICS] = Metrics(_sources(app))
    app[appkeys.DRAINING] = asyncio.Event()
