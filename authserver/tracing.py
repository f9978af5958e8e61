"""OpenTelemetry tracing, optional (`pip install 'authserver[otel]'`) and off unless asked for.

Configured only by the standard variables: it is on when `OTEL_TRACES_EXPORTER` names an
exporter (`otlp`, `console`), or, that unset, when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` turn it off. The SDK reads the rest itself: `OTEL_SERVICE_NAME`
(default here `authserver`) and `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
`OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*` (endpoint, headers, protocol http/protobuf).
Propagation is W3C trace context only (`traceparent`, `tracestate`), whatever
`OTEL_PROPAGATORS` says: baggage is whatever a device wrote, and must neither shape our spans
nor travel on to the vendor's API with our signed calls.

Off, the gateway imports nothing of OpenTelemetry (redis-py, when OpenTelemetry is installed,
imports its metrics API by itself) and the request path pays one `is None` test.
On, each request is a SERVER span named `METHOD /route/template` with the HTTP server
semantic conventions; the token store's calls, the quota wait and every upstream attempt
are its children, and the upstream call carries the trace context (`traceparent`).

No attribute holds a JWT, an MQTT token, a key, a secret or a header value: the request's
attributes are its method, route template, path (only on a route of fixed shape: a path
no route matched, or one under a catch-all, is whatever the caller typed, a JWT perhaps),
scheme, status, server address and
protocol version; the store's, the operation name; the upstream's, the action, the
attempt, the vendor code and the endpoint URL (no query: the signed parameters travel in the
body). Exceptions are not recorded on spans (their messages may quote what the vendor
said); the span status carries the problem code instead.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from authserver.tokens.model import TokenRecord
    from authserver.tokens.sharing import Holder
    from authserver.tokens.store import EpochName, Epochs, TokenStore

EXPORTERS = frozenset({"otlp", "console"})
INSTRUMENTATION = "authserver"


def exporters_from_env(env: Mapping[str, str]) -> tuple[tuple[str, ...], list[str]]:
    """The trace exporters the OTEL_* variables ask for (empty: tracing off), and problems."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return (), []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return (("otlp",) if endpoint else ()), []
    exporters = tuple(e.strip().lower() for e in named.split(",") if e.strip())
    if exporters == ("none",):
        return (), []
    problems = [
        f"OTEL_TRACES_EXPORTER: {e!r} is not one of {', '.join(sorted(EXPORTERS))} or none"
        for e in exporters
        if e not in EXPORTERS
    ]
    if not problems:
        try:
            import opentelemetry.sdk.trace

            if "otlp" in exporters:
                import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        except ImportError:
            problems.append(
                "OTEL_* variables ask for tracing but OpenTelemetry is not installed: "
                "pip install 'authserver[otel]'"
            )
    return exporters, problems


def provider_from_env(
    exporters: tuple[str, ...], env: Mapping[str, str] | None = None
) -> TracerProvider:
    """An SDK tracer provider exporting to `exporters`, batched, configured by OTEL_*."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    env = os.environ if env is None else env
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "authserver"}
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_*
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


class RequestSpan:
    """The SERVER span of one request, current while the handler runs."""

    __slots__ = ("_span", "_token")

    def __init__(
        self,
        tracer: Tracer,
        method: str,
        route: str,
        path: str | None,
        scheme: str,
        host: str | None,
        port: int | None,
        version: tuple[int, int],
        headers: Mapping[str, str],
    ) -> None:
        from opentelemetry import context, trace

        # The caller's traceparent (if any) is the parent: a device or a proxy may trace too.
        parent = _propagator().extract(headers)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "http.route": route,
            "url.scheme": scheme,
            "network.protocol.version": f"{version[0]}.{version[1]}",
        }
        if path is not None:
            attributes["url.path"] = path
        if host:
            attributes["server.address"] = host
        if port is not None:
            attributes["server.port"] = port
        self._span = tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
        )
        self._token = context.attach(trace.set_span_in_context(self._span, parent))

    def end(self, status: int) -> None:
        """Record the answer's status (5xx marks the span an error) and end the span."""
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span = self._span
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        context.detach(self._token)
        span.end()


def start_span(
    tracer: Tracer, name: str, attributes: Mapping[str, Any], *, client: bool = False
) -> AbstractContextManager[Span]:
    """A child span of the current one, used as `with start_span(...) as span:`."""
    from opentelemetry import trace

    kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
    return tracer.start_as_current_span(
        name,
        kind=kind,
        attributes=dict(attributes),
        record_exception=False,
        set_status_on_exception=True,
    )


def _propagator() -> Any:
    """W3C trace context alone (no baggage: see the module docstring)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def inject(headers: dict[str, str]) -> None:
    """Add the current trace context (traceparent, tracestate; never baggage) to `headers`."""
    _propagator().inject(headers)


def mark_error(span: Span, code: str) -> None:
    """Mark `span` failed with a stable code (never an exception message)."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", code)
    span.set_status(Status(StatusCode.ERROR, code))


class TracedStore:
    """A token store whose calls are child spans `store.<operation>` (arguments not recorded).

    Wraps any `TokenStore` when tracing is on; when off the store is used unwrapped.
    """

    def __init__(self, store: TokenStore, tracer: Tracer, system: str) -> None:
        self._store = store
        self._tracer = tracer
        self._system = system
        self.shared = store.shared

    def _span(self, operation: str) -> AbstractContextManager[Span]:
        return start_span(
            self._tracer,
            f"store.{operation}",
            {"authserver.store.operation": operation, "authserver.store.system": self._system},
            client=self._system == "redis",
        )

    async def get(self, key: str, subject: str) -> TokenRecord | None:
        """Traced `TokenStore.get`."""
        with self._span("get"):
            return await self._store.get(key, subject)

    async def put(self, key: str, record: TokenRecord, *, epochs: Epochs | None = None) -> bool:
        """Traced `TokenStore.put`."""
        with self._span("put"):
            return await self._store.put(key, record, epochs=epochs)

    async def epochs(self, names: tuple[EpochName, ...]) -> Epochs:
        """Traced `TokenStore.epochs`."""
        with self._span("epochs"):
            return await self._store.epochs(names)

    async def bump_epoch(self, scope: str, name: str) -> int:
        """Traced `TokenStore.bump_epoch`."""
        with self._span("bump_epoch"):
            return await self._store.bump_epoch(scope, name)

    async def subject_tokens(self, subject: str) -> list[tuple[str, TokenRecord]]:
        """Traced `TokenStore.subject_tokens`."""
        with self._span("subject_tokens"):
            return await self._store.subject_tokens(subject)

    async def client_tokens(self, client_id: str) -> list[tuple[str, TokenRecord]]:
        """Traced `TokenStore.client_tokens`."""
        with self._span("client_tokens"):
            return await self._store.client_tokens(client_id)

    async def claim_tokens(self, mark: str) -> list[tuple[str, TokenRecord]]:
        """Traced `TokenStore.claim_tokens` (the claim value is not an attribute)."""
        with self._span("claim_tokens"):
            return await self._store.claim_tokens(mark)

    async def lookup(self, token: str) -> tuple[str, TokenRecord] | None:
        """Traced `TokenStore.lookup` (the token is the argument: never an attribute)."""
        with self._span("lookup"):
            return await self._store.lookup(token)

    def all_tokens(self) -> AsyncIterator[tuple[str, TokenRecord]]:
        """`TokenStore.all_tokens`, untraced: a background sweep, not part of a request."""
        return self._store.all_tokens()

    async def delete(self, key: str, record: TokenRecord) -> None:
        """Traced `TokenStore.delete`."""
        with self._span("delete"):
            await self._store.delete(key, record)

    async def delete_many(self, records: list[tuple[str, TokenRecord]]) -> None:
        """Traced `TokenStore.delete_many`."""
        with self._span("delete_many"):
            await self._store.delete_many(records)

    async def lock(self, key: str, subject: str, ttl: float) -> str | None:
        """Traced `TokenStore.lock`."""
        with self._span("lock"):
            return await self._store.lock(key, subject, ttl)

    async def unlock(self, key: str, subject: str, lock_id: str) -> None:
        """Traced `TokenStore.unlock`."""
        with self._span("unlock"):
            await self._store.unlock(key, subject, lock_id)

    async def ping(self) -> bool:
        """`TokenStore.ping`, untraced: readiness polls it."""
        return await self._store.ping()

    async def hold(self, record: TokenRecord, holder: Holder) -> None:
        """Traced `TokenStore.hold`."""
        with self._span("hold"):
            await self._store.hold(record, holder)

    async def held(self, scope: str, name: str) -> list[tuple[str, TokenRecord]]:
        """Traced `TokenStore.held`."""
        with self._span("held"):
            return await self._store.held(scope, name)

    async def holders(self, record: TokenRecord) -> tuple[list[Holder], bool]:
        """Traced `TokenStore.holders`."""
        with self._span("holders"):
            return await self._store.holders(record)

    def watch_evictions(self, callback: Callable[[str], None]) -> None:
        """`TokenStore.watch_evictions`."""
        self._store.watch_evictions(callback)
