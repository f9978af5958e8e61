"""Admin routes over the legacy Ons management API (001), against the emulator."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from authserver.cloud.quota import DEFAULT_LIMITS
from tests.admin.conftest import admin_headers
from tests.admin.test_openapi import call_and_check
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway

MINUTE_MS = 60_000
# The documented 30 calls a minute would space a test's repeated calls by two seconds.
FAST = {**DEFAULT_LIMITS, **{a: 1000.0 for a in DEFAULT_LIMITS if a.startswith("OnsMqtt")}}


async def gateway(
    emulator: EmulatorHandle, make_gateway: MakeGateway, **overrides: Any
) -> TestClient[Any, Any]:
    overrides.setdefault("ons_endpoint", emulator.url)
    overrides.setdefault("quota", FAST)
    return await make_gateway(emulator, **overrides)


def online_fleet(emulator: EmulatorHandle) -> int:
    state = emulator.state
    start = state.now_ms()
    state.set_online(["GID_fleet@@@d1", "GID_fleet@@@d2", "GID_lab@@@x1"])
    state.subscriptions["GID_fleet@@@d1"] = {"fleet/+/cmd": 1}
    state.subscriptions["GID_lab@@@x1"] = {"fleet/#": 0}
    state.client_sessions["GID_fleet@@@d1"].address = "/10.0.0.7:50255"
    return start


async def test_client_detail_and_online_counts(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    start = online_fleet(emulator)
    client = await gateway(emulator, make_gateway)
    status, detail = await call_and_check(
        client, "GET", "/v1/admin/clients/GID_fleet@@@d1", "/v1/admin/clients/{clientId}"
    )
    assert status == 200
    assert (detail["online"], detail["address"]) == (True, "/10.0.0.7:50255")
    assert detail["lastTouch"] >= start
    assert detail["subscriptions"] == [
        {"topic": "fleet/+/cmd", "parentTopic": "fleet", "subTopic": "/+/cmd", "qos": 1}
    ]
    status, group = await call_and_check(
        client, "GET", "/v1/admin/groups/GID_fleet/online", "/v1/admin/groups/{groupId}/online"
    )
    assert (status, group) == (200, {"groupId": "GID_fleet", "onlineCount": 2})
    status, topic = await call_and_check(
        client, "GET", "/v1/admin/topics/online?topic=fleet/d7/cmd", "/v1/admin/topics/online"
    )
    assert (status, topic) == (200, {"topic": "fleet/d7/cmd", "onlineCount": 2})
    status, whole = await call_and_check(
        client, "GET", "/v1/admin/topics/online?topic=fleet", "/v1/admin/topics/online"
    )
    assert whole["onlineCount"] == 2


async def test_history_and_message_volume(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    online_fleet(emulator)
    # From the moment the online set took effect (the clock is real: the millisecond before
    # it may still show nobody online).
    start = emulator.state.online_log[-1][0]
    client = await gateway(emulator, make_gateway)
    for topic in ("fleet/d1/cmd", "fleet/d2/cmd"):
        resp = await client.post(
            "/v1/admin/messages", json={"topic": topic, "payload": "x"}, headers=admin_headers()
        )
        assert resp.status == 202
    end = start + MINUTE_MS
    status, history = await call_and_check(
        client,
        "GET",
        f"/v1/admin/groups/GID_fleet/online-history?begin={start}&end={end}",
        "/v1/admin/groups/{groupId}/online-history",
    )
    assert status == 200
    assert history["points"] == [{"time": start, "value": 2}, {"time": end, "value": 2}]
    assert (history["begin"], history["end"]) == (start, end)
    path = f"/v1/admin/topics/messages?topic=fleet&begin={start}&end={end - 1}"
    status, pub = await call_and_check(client, "GET", path, "/v1/admin/topics/messages")
    assert (status, pub["measure"], pub["direction"]) == (200, "SUM", "PUB")
    assert sum(p["value"] for p in pub["points"]) == 2
    status, sub = await call_and_check(
        client, "GET", path + "&direction=SUB", "/v1/admin/topics/messages"
    )
    assert sum(p["value"] for p in sub["points"]) == 2 + 2  # each reached d1 and x1
    status, one = await call_and_check(
        client,
        "GET",
        f"/v1/admin/topics/messages?topic=fleet/d2/cmd&begin={start}&end={end - 1}",
        "/v1/admin/topics/messages",
    )
    assert sum(p["value"] for p in one["points"]) == 1


async def test_parameters_are_checked_before_the_upstream(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway)
    for path in (
        "/v1/admin/clients/nope",
        "/v1/admin/groups/nope/online",
        "/v1/admin/groups/GID_fleet/online?x=1",
        "/v1/admin/groups/GID_fleet/online-history?begin=10&end=5",
        f"/v1/admin/groups/GID_fleet/online-history?begin=0&end={25 * 60 * MINUTE_MS}",
        "/v1/admin/groups/GID_fleet/online-history?begin=abc",
        "/v1/admin/topics/online",
        "/v1/admin/topics/online?topic=%2B/x",
        "/v1/admin/topics/online?topic=a/%23/b",
        "/v1/admin/topics/messages?topic=a&measure=AVG",
        "/v1/admin/topics/messages?topic=a&direction=BOTH",
    ):
        resp = await client.get(path, headers=admin_headers())
        assert resp.status == 400, path
        assert resp.content_type == "application/problem+json"
    assert emulator.state.stats()["calls"] == {}


async def test_not_configured_without_an_ons_endpoint(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway, ons_endpoint=None)
    status, problem = await call_and_check(
        client, "GET", "/v1/admin/groups/GID_fleet/online", "/v1/admin/groups/{groupId}/online"
    )
    assert (status, problem["code"]) == (501, "not_configured")
    assert "AUTHSERVER_ONS_ENDPOINT" in problem["detail"]


async def test_thirty_a_minute_is_a_503_not_an_upstream_throttle(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway, quota=dict(DEFAULT_LIMITS), request_deadline=0.5)
    path = "/v1/admin/groups/GID_fleet/online"
    first = await client.get(path, headers=admin_headers())
    assert first.status == 200
    second = await client.get(path, headers=admin_headers())
    assert second.status == 503
    assert (await second.json())["code"] == "upstream_throttled"
    assert int(second.headers["Retry-After"]) >= 1
    assert emulator.state.stats()["calls"]["OnsMqttQueryClientByGroupId"] == 1
