"""OpenTelemetry: a SERVER span per request, children for store, quota and upstream, no secret.

The SDK's in-memory exporter collects what a real exporter would send. The upstream is the
emulator behind a recording proxy, so the test sees the `traceparent` each call carried.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from authserver import appkeys
from authserver.app import create_app
from authserver.settings import SettingsError, load_settings
from authserver.tracing import exporters_from_env
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import (
    EXAMPLE_POLICY,
    JWT_SECRET,
    bearer,
    gateway_settings,
    make_jwt,
)

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_PARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@dataclasses.dataclass
class Traced:
    """A gateway tracing into memory, and the headers its upstream calls carried."""

    client: TestClient[Any, Any]
    exporter: InMemorySpanExporter
    upstream_headers: list[dict[str, str]]

    def spans(self) -> list[ReadableSpan]:
        """Every span finished so far."""
        return list(self.exporter.get_finished_spans())


@pytest.fixture
async def traced(
    emulator: EmulatorHandle, aiohttp_client: Any, aiohttp_server: Any
) -> AsyncIterator[Traced]:
    upstream_headers: list[dict[str, str]] = []
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        upstream_headers.append(dict(request.headers))
        async with session.post(
            emulator.url + "/",
            data=await request.read(),
            headers={"Content-Type": request.headers["Content-Type"]},
        ) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type
            )

    proxy_app = web.Application()
    proxy_app.router.add_post("/", forward)
    proxy = await aiohttp_server(proxy_app)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = dataclasses.replace(
        gateway_settings(emulator), mqtt_endpoint=str(proxy.make_url("/"))
    )
    client = await aiohttp_client(create_app(settings, tracer_provider=provider))
    try:
        yield Traced(client, exporter, upstream_headers)
    finally:
        await session.close()
        provider.shutdown()


def _hex(value: int, width: int) -> str:
    return f"{value:0{width}x}"


async def test_a_token_request_is_one_trace_with_store_quota_and_upstream_children(
    traced: Traced, emulator: EmulatorHandle
) -> None:
    jwt = make_jwt("alice", groups=["ops"], tenant="t1")
    resp = await traced.client.post(
        "/v1/token", headers={**bearer(jwt), "traceparent": CALLER_PARENT}
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    spans = traced.spans()

    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.name == "POST /v1/token"
    assert server.context is not None
    assert _hex(server.context.trace_id, 32) == CALLER_TRACE  # continues the caller's trace
    assert server.parent is not None
    assert _hex(server.parent.span_id, 16) == "00f067aa0ba902b7"
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v1/token"
    assert attributes["url.path"] == "/v1/token"
    assert attributes["url.scheme"] == "http"
    assert attributes["http.response.status_code"] == 200
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["network.protocol.version"] == "1.1"

    trace_id = server.context.trace_id
    children = [s for s in spans if s is not server]
    assert children
    assert all(s.context is not None and s.context.trace_id == trace_id for s in children)
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    for span in children:  # every child hangs, at some depth, under the request's span
        parent = span.parent
        while parent is not None and parent.span_id != server.context.span_id:
            parent = by_id[parent.span_id].parent
        assert parent is not None, span.name

    applies = [s for s in spans if s.name == "ApplyToken"]
    assert len(applies) == 2  # the read and the write token
    for apply in applies:
        assert apply.kind == SpanKind.CLIENT
        assert dict(apply.attributes or {}) == {
            "authserver.upstream.action": "ApplyToken",
            "authserver.upstream.attempt": 1,
            "authserver.upstream.vendor_code": "ok",
            "http.request.method": "POST",
            "http.response.status_code": 200,
            "url.full": traced.client.app[appkeys.CLOUD].endpoint,
        }
    waits = [s for s in spans if s.name == "quota.wait"]
    assert len(waits) == 2
    assert {dict(s.attributes or {})["authserver.upstream.action"] for s in waits} == {"ApplyToken"}
    stores = {s.name for s in spans if s.name.startswith("store.")}
    assert {"store.get", "store.put"} <= stores
    assert all(
        dict(s.attributes or {})["authserver.store.system"] == "memory"
        for s in spans
        if s.name.startswith("store.")
    )

    # Each upstream call carried its own span's context.
    sent = sorted(h["traceparent"] for h in traced.upstream_headers)
    assert sent == sorted(
        f"00-{_hex(trace_id, 32)}-{_hex(s.context.span_id, 16)}-01"
        for s in applies
        if s.context is not None
    )

    # Nothing secret in any span: names, attributes, events, links, resource.
    dump = "\n".join(s.to_json() for s in spans)
    secrets = [jwt, JWT_SECRET, emulator.access_key_secret, body["password"]]
    secrets += [t["token"] for t in body["tokens"]]
    for secret in secrets:
        assert secret not in dump
    assert "Bearer" not in dump
    assert "Signature" not in dump


async def test_upstream_attempts_carry_the_vendor_code(
    traced: Traced, emulator: EmulatorHandle
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emulator.url}/_emulator/faults",
            json={"action": "ApplyToken", "errorCode": "InternalError", "rate": 1.0},
        ) as resp,
    ):
        assert resp.status == 200
    resp = await traced.client.post("/v1/token", headers=bearer(make_jwt("bob")))
    assert resp.status >= 500
    spans = traced.spans()
    attempts = [dict(s.attributes or {}) for s in spans if s.name == "ApplyToken"]
    assert len(attempts) >= 2  # retried
    assert {a["authserver.upstream.vendor_code"] for a in attempts} == {"InternalError"}
    assert {a["authserver.upstream.attempt"] for a in attempts} >= {1, 2}
    assert all(s.status.status_code == StatusCode.ERROR for s in spans if s.name == "ApplyToken")
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.status.status_code == StatusCode.ERROR
    assert dict(server.attributes or {})["http.response.status_code"] == resp.status


async def test_an_admin_request_is_traced_under_its_route_template(traced: Traced) -> None:
    admin = make_jwt("root", scope="authserver:admin")
    resp = await traced.client.get("/v1/admin/subjects/alice/tokens", headers=bearer(admin))
    assert resp.status == 200
    [server] = [s for s in traced.spans() if s.kind == SpanKind.SERVER]
    assert server.name == "GET /v1/admin/subjects/{subject}/tokens"
    assert admin not in server.to_json()


async def test_a_path_of_the_callers_choosing_is_not_recorded(traced: Traced) -> None:
    jwt = make_jwt("mallory")
    resp = await traced.client.get(f"/{jwt}")
    assert resp.status == 404
    resp = await traced.client.get(f"/v1/admin/{jwt}", headers=bearer(jwt))
    assert resp.status in {401, 403}
    spans = traced.spans()
    assert [s.name for s in spans] == ["GET <unmatched>", "GET /v1/admin/{tail}"]
    for span in spans:
        assert "url.path" not in dict(span.attributes or {})
        assert jwt not in span.to_json()


async def test_tracing_is_off_without_otel_variables(
    emulator: EmulatorHandle, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(create_app(gateway_settings(emulator)))
    assert client.app[appkeys.TRACER] is None
    assert client.app[appkeys.CLOUD].tracer is None
    resp = await client.post("/v1/token", headers=bearer(make_jwt("carol")))
    assert resp.status == 200


async def test_otel_variables_turn_it_on(emulator: EmulatorHandle, aiohttp_client: Any) -> None:
    settings = dataclasses.replace(gateway_settings(emulator), trace_exporters=("console",))
    client = await aiohttp_client(create_app(settings))
    assert client.app[appkeys.TRACER] is not None


def test_exporters_come_from_the_standard_variables() -> None:
    assert exporters_from_env({}) == ((), [])
    assert exporters_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == (("otlp",), [])
    assert exporters_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c"})[0] == ("otlp",)
    assert exporters_from_env({"OTEL_TRACES_EXPORTER": "console,otlp"}) == (
        ("console", "otlp"),
        [],
    )
    assert exporters_from_env({"OTEL_TRACES_EXPORTER": "none"}) == ((), [])
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}
    assert exporters_from_env(disabled) == ((), [])
    [problem] = exporters_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})[1]
    assert "zipkin" in problem


def test_a_bad_exporter_is_a_settings_problem() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"OTEL_TRACES_EXPORTER": "jaeger"})
    assert any("OTEL_TRACES_EXPORTER" in p for p in raised.value.problems)


def test_off_imports_nothing_of_opentelemetry(emulator: EmulatorHandle) -> None:
    script = (
        "import sys\n"
        "from authserver.app import create_app\n"
        "from authserver.settings import load_settings\n"
        "create_app(load_settings())\n"
        # redis-py imports OpenTelemetry's metrics API on its own when it is installed; the
        # gateway's tracing needs the trace SDK and the propagators, which stay unloaded.
        "tracing = ('opentelemetry.sdk.trace', 'opentelemetry.propagate')\n"
        "loaded = [m for m in tracing if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTHSERVER_"))}
    env.update(
        ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret,
        AUTHSERVER_MQTT_INSTANCE_ID=emulator.instance_id,
        AUTHSERVER_MQTT_ENDPOINT=emulator.url,
        AUTHSERVER_POLICY_FILE=str(EXAMPLE_POLICY),
        AUTHSERVER_JWT_SECRET=JWT_SECRET,
        AUTHSERVER_JWT_ISSUER="https://login.example.test/",
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


async def test_a_devices_baggage_never_reaches_the_upstream(traced: Traced) -> None:
    # Found in review: a device's `baggage` header (7 KB of its own words) was extracted as
    # trace context and injected into the signed ApplyToken calls.
    jwt = make_jwt("bob")
    headers = {**bearer(jwt), "traceparent": CALLER_PARENT, "baggage": "attacker=" + "x" * 4000}
    resp = await traced.client.post("/v1/token", headers=headers)
    assert resp.status == 200, await resp.text()
    assert traced.upstream_headers
    for sent in traced.upstream_headers:
        assert "traceparent" in sent
        assert not {name.lower() for name in sent} & {"baggage"}
