"""Health, readiness and the OpenAPI description kept in step with the router."""

from __future__ import annotations

from typing import Any

from authserver.app import create_app
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, gateway_settings


async def test_healthz_and_readyz(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) >= {"policy", "store", "upstream", "jwtKeys"}


async def test_readyz_reports_unreachable_redis(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, redis_url="redis://127.0.0.1:1/0")
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["store"] == "unreachable"


async def test_openapi_describes_exactly_the_routes(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    spec: dict[str, Any] = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    app = create_app(gateway_settings(emulator))
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        # The admin catch-all only turns unknown admin paths into 401-then-404.
        if route.method != "HEAD" and not path.endswith("{tail}"):
            served.add((path, route.method.lower()))
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == described
