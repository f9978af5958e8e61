"""Health, readiness and the OpenAPI description kept in step with the router."""

from __future__ import annotations

import asyncio
from typing import Any

from authserver import appkeys
from authserver.app import create_app
from authserver.identity import JWTSettings
from authserver.web.observe import start_draining
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import ISSUER, MakeGateway, gateway_settings
from tests.fixtures.redis import RedisServer, free_port
from tests.helpers import eventually


async def test_healthz_and_readyz(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    assert body["checks"] == {
        "jwtKeys": "ok",
        "blocklist": "ok",
        "shutdown": "ok",
        "store": "ok",
        "upstream": "ok",
    }


async def readiness(client: Any) -> tuple[int, dict[str, Any]]:
    """/readyz's status and body."""
    async with client.get("/readyz") as resp:
        return resp.status, await resp.json()


async def test_redis_stopped_after_start_up_leaves_the_pod_ready(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    # Redis is shared by every replica: failing on it would empty the Service at once,
    # while each pod can still serve its cached answers.
    if not redis_server.ping():
        redis_server.start()
    client = await make_gateway(emulator, redis_url=redis_server.url)
    # The blocks are read with the invalidation bus's first subscription.
    await eventually(lambda: client.app[appkeys.REVOKER].blocks_loaded)
    assert (await readiness(client))[0] == 200
    await asyncio.to_thread(redis_server.stop)
    try:
        status, body = await readiness(client)
    finally:
        await asyncio.to_thread(redis_server.start)
    assert status == 200
    assert body["status"] == "ready"
    assert body["checks"]["store"] == "unreachable"
    assert body["checks"]["blocklist"] == "ok"


async def test_blocklist_never_read_at_start_up_is_not_ready(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # Unlike a Redis outage later on, a pod that never read the blocks could serve a JWT an
    # admin blocked before it started: that is this pod's own state, so it is not ready.
    client = await make_gateway(emulator, redis_url="redis://127.0.0.1:1/0")
    status, body = await readiness(client)
    assert status == 503
    assert body["checks"]["blocklist"] == "not loaded"
    assert body["checks"]["store"] == "unreachable"


async def test_jwt_keys_never_loaded_is_not_ready(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    jwks = JWTSettings(
        algorithms=("RS256",), issuer=ISSUER, jwks_url=f"http://127.0.0.1:{free_port()}/jwks"
    )
    client = await make_gateway(emulator, jwt=jwks)
    status, body = await readiness(client)
    assert status == 503
    assert body["checks"]["jwtKeys"] == "not loaded"


async def test_an_open_circuit_leaves_the_pod_ready(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    circuit = client.app[appkeys.CLOUD].circuit
    while circuit.state != "open":
        circuit.record_failure()
    status, body = await readiness(client)
    assert status == 200
    assert body["checks"]["upstream"] == "circuit open"


async def test_draining_is_not_ready(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    start_draining(client.app)
    status, body = await readiness(client)
    assert status == 503
    assert body["status"] == "not ready"
    assert body["checks"]["shutdown"] == "draining"


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
