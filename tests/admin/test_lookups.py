"""Device lookups against the emulator: sessions, device credentials, IoT ClientIDs."""

from __future__ import annotations

from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway

ONLINE = "GID_fleet@@@dev-1"
OFFLINE = "GID_fleet@@@dev-2"


def calls(emulator: EmulatorHandle, action: str) -> int:
    """How many calls of `action` reached the emulator."""
    return int(emulator.state.stats()["calls"].get(action, 0))


async def test_one_session(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    emulator.state.set_online([ONLINE])
    client = await make_gateway(emulator)
    for client_id, online in ((ONLINE, True), (OFFLINE, False)):
        resp = await client.get(f"/v1/admin/sessions/{client_id}", headers=admin_headers())
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"clientId": client_id, "online": online}
    assert calls(emulator, "QuerySessionByClientId") == 2


async def test_session_client_id_is_validated(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    resp = await client.get("/v1/admin/sessions/not-a-client-id", headers=admin_headers())
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["field"] == "clientId"
    assert calls(emulator, "QuerySessionByClientId") == 0


async def test_batch_sessions_in_chunks_of_ten(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    ids = [f"GID_fleet@@@dev-{n}" for n in range(25)]
    emulator.state.set_online(ids[::3])
    client = await make_gateway(emulator)
    resp = await client.post(
        "/v1/admin/sessions:query", json={"clientIds": ids}, headers=admin_headers()
    )
    assert resp.status == 200, await resp.text()
    sessions = (await resp.json())["sessions"]
    assert sessions == [{"clientId": c, "online": n % 3 == 0} for n, c in enumerate(ids)]
    assert calls(emulator, "BatchQuerySessionByClientIds") == 3


async def test_batch_sessions_bounds(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    bad_bodies = [
        {"clientIds": []},
        {"clientIds": [f"GID_fleet@@@d{n}" for n in range(101)]},
        {"clientIds": ["nope"]},
        {"clientIds": "GID_fleet@@@d1"},
        {"clientIds": [1]},
        {},
        {"clientIds": [ONLINE], "extra": 1},
    ]
    for body in bad_bodies:
        resp = await client.post("/v1/admin/sessions:query", json=body, headers=admin_headers())
        assert resp.status == 400, body
    resp = await client.post(
        "/v1/admin/sessions:query",
        json={"clientIds": [f"GID_fleet@@@d{n}" for n in range(100)]},
        headers=admin_headers(),
    )
    assert resp.status == 200
    assert len((await resp.json())["sessions"]) == 100
    assert calls(emulator, "BatchQuerySessionByClientIds") == 10


async def test_colon_route_is_literal(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    resp = await client.post(
        "/v1/admin/sessions:other", json={"clientIds": [ONLINE]}, headers=admin_headers()
    )
    assert resp.status in (404, 405)
    resource = client.app.router["admin.sessions_query"]
    assert resource.get_info() == {"path": "/v1/admin/sessions:query"}


async def test_device_credentials_paging(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    group = "GID_fleet"
    ids = sorted(f"{group}@@@dev-{n:02d}" for n in range(7))
    for client_id in ids:
        emulator.state.register_credential(emulator.instance_id, client_id)
    emulator.state.register_credential(emulator.instance_id, "GID_other@@@x")
    client = await make_gateway(emulator)
    url = f"/v1/admin/groups/{group}/device-credentials"

    resp = await client.get(url, params={"pageSize": "3"}, headers=admin_headers())
    assert resp.status == 200, await resp.text()
    first = await resp.json()
    assert first["groupId"] == group
    assert first["total"] == 7
    assert first["clientIds"] == ids[:3]
    assert first["pageNo"] == 1
    assert first["pageSize"] == 3
    assert first["nextToken"]

    seen = list(first["clientIds"])
    token = first["nextToken"]
    while token:
        page = await (
            await client.get(
                url, params={"pageSize": "3", "nextToken": token}, headers=admin_headers()
            )
        ).json()
        seen += page["clientIds"]
        token = page["nextToken"]
    assert seen == ids

    by_number = await (
        await client.get(url, params={"pageSize": "3", "pageNo": "3"}, headers=admin_headers())
    ).json()
    assert by_number["clientIds"] == ids[6:]
    assert by_number["nextToken"] is None


async def test_device_credentials_validation(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    cases = [
        ("/v1/admin/groups/GID_ab/device-credentials", {}),  # 6 characters
        ("/v1/admin/groups/XID_fleet/device-credentials", {}),
        ("/v1/admin/groups/GID_" + "a" * 61 + "/device-credentials", {}),  # 65 characters
        ("/v1/admin/groups/GID_fleet/device-credentials", {"pageSize": "0"}),
        ("/v1/admin/groups/GID_fleet/device-credentials", {"pageSize": "101"}),
        ("/v1/admin/groups/GID_fleet/device-credentials", {"pageSize": "ten"}),
        ("/v1/admin/groups/GID_fleet/device-credentials", {"pageNo": "0"}),
        ("/v1/admin/groups/GID_fleet/device-credentials", {"page": "1"}),
    ]
    for url, params in cases:
        resp = await client.get(url, params=params, headers=admin_headers())
        assert resp.status == 400, (url, params)
        assert resp.content_type == "application/problem+json"
    ok = await client.get(
        "/v1/admin/groups/GID_" + "a" * 60 + "/device-credentials", headers=admin_headers()
    )
    assert ok.status == 200
    assert (await ok.json())["total"] == 0


async def test_a_next_token_the_upstream_never_issued_is_the_callers_mistake(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    resp = await client.get(
        "/v1/admin/groups/GID_fleet/device-credentials",
        params={"nextToken": "garbage"},
        headers=admin_headers(),
    )
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == "bad_request"
    assert body["field"] == "nextToken"


async def test_iot_client_ids(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    emulator.state.set_iot_client_ids("iot-dev-1", ["GID_fleet@@@a", "GID_fleet@@@b"])
    client = await make_gateway(emulator, iot_endpoint=emulator.url)
    resp = await client.get("/v1/admin/iot/devices/iot-dev-1/client-ids", headers=admin_headers())
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["iotId"] == "iot-dev-1"
    assert [c["clientId"] for c in body["clientIds"]] == ["GID_fleet@@@a", "GID_fleet@@@b"]
    assert all(isinstance(c["createTime"], int) for c in body["clientIds"])

    missing = await client.get("/v1/admin/iot/devices/nobody/client-ids", headers=admin_headers())
    assert missing.status == 404
    assert (await missing.json())["upstream_code"] == "iot.device.NotExistedDevice"


async def test_iot_not_configured(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    resp = await client.get("/v1/admin/iot/devices/iot-dev-1/client-ids", headers=admin_headers())
    assert resp.status == 501
    body = await resp.json()
    assert body["code"] == "not_configured"
    assert "AUTHSERVER_IOT_REGION_ID" in body["detail"]
    assert "AUTHSERVER_IOT_ENDPOINT" in body["detail"]
    assert calls(emulator, "QueryClientIds") == 0
