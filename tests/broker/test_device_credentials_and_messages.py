"""Device credentials and SendMessage end to end: gateway, emulator broker, paho devices."""

from __future__ import annotations

from pathlib import Path

from tests.admin.conftest import admin_headers
from tests.broker.conftest import MakeDevice, broker_of
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt

POLICY = Path(__file__).resolve().parent.parent / "fixtures" / "credential-policy.yaml"
CID = "GID_fleet@@@s1"


async def test_the_handed_out_login_connects_until_rotated_or_dropped(
    mqtt_emulator: EmulatorHandle, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    gateway = await make_gateway(mqtt_emulator, policy_file=POLICY)
    jwt = bearer(make_jwt("s1", groups=["sensors"]))
    resp = await gateway.post("/v1/device-credential", json={"clientId": CID}, headers=jwt)
    assert resp.status == 200, await resp.text()
    login = await resp.json()
    port = broker_of(mqtt_emulator).port
    first = device(CID)
    assert await first.connect(port, login["username"], login["password"]) == 0
    first.close()
    rotated = await gateway.post(
        f"/v1/admin/device-credentials/{CID}/refresh", headers=admin_headers()
    )
    assert rotated.status == 200
    stale = device(CID)
    assert str(await stale.connect(port, login["username"], login["password"])) == (
        "Not authorized"
    )
    fresh = await (
        await gateway.post("/v1/device-credential", json={"clientId": CID}, headers=jwt)
    ).json()
    again = device(CID)
    assert await again.connect(port, fresh["username"], fresh["password"]) == 0
    again.close()
    dropped = await gateway.delete(f"/v1/admin/device-credentials/{CID}", headers=admin_headers())
    assert dropped.status == 200
    gone = device(CID)
    assert str(await gone.connect(port, fresh["username"], fresh["password"])) == "Not authorized"


async def test_send_message_reaches_a_subscriber(
    mqtt_emulator: EmulatorHandle, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    gateway = await make_gateway(mqtt_emulator, policy_file=POLICY)
    jwt = bearer(make_jwt("s1", groups=["sensors"]))
    login = await (
        await gateway.post("/v1/device-credential", json={"clientId": CID}, headers=jwt)
    ).json()
    sensor = device(CID)
    assert (
        await sensor.connect(broker_of(mqtt_emulator).port, login["username"], login["password"])
        == 0
    )
    assert await sensor.subscribed("devices/s1/cmd") == [1]
    sent = await gateway.post(
        "/v1/admin/messages",
        json={"topic": "devices/s1/cmd", "payload": "come back for new credentials"},
        headers=admin_headers(),
    )
    assert sent.status == 202, await sent.text()
    [received] = await sensor.got("devices/s1/cmd")
    assert received.payload == b"come back for new credentials"
    p2p = await gateway.post(
        "/v1/admin/messages",
        json={"topic": f"devices/p2p/{CID}", "payload": "just you"},
        headers=admin_headers(),
    )
    assert p2p.status == 202
    [direct] = await sensor.got(f"devices/p2p/{CID}")
    assert direct.payload == b"just you"


async def test_legacy_client_detail_from_a_live_session(
    mqtt_emulator: EmulatorHandle, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    gateway = await make_gateway(mqtt_emulator, policy_file=POLICY, ons_endpoint=mqtt_emulator.url)
    jwt = bearer(make_jwt("s1", groups=["sensors"]))
    login = await (
        await gateway.post("/v1/device-credential", json={"clientId": CID}, headers=jwt)
    ).json()
    sensor = device(CID)
    port = broker_of(mqtt_emulator).port
    assert await sensor.connect(port, login["username"], login["password"]) == 0
    assert await sensor.subscribed("devices/s1/cmd") == [1]
    resp = await gateway.get(f"/v1/admin/clients/{CID}", headers=admin_headers())
    assert resp.status == 200, await resp.text()
    detail = await resp.json()
    assert detail["online"] is True
    assert detail["address"].startswith("/127.0.0.1:")
    assert detail["subscriptions"] == [
        {"topic": "devices/s1/cmd", "parentTopic": "devices", "subTopic": "/s1/cmd", "qos": 1}
    ]
