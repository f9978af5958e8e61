"""The admin OpenAPI description is exact: answers match it, and it refuses what we refuse."""

from __future__ import annotations

import time
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestClient

from authserver.clock import ManualClock
from authserver.web.openapi import openapi_document
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt

SPEC = openapi_document()


def validator(schema: dict[str, Any]) -> Any:
    """A 2020-12 validator whose `#/components/...` references resolve in SPEC."""
    root = {**schema, "components": SPEC["components"]}
    return jsonschema.Draft202012Validator(root)


def request_schema(path: str) -> dict[str, Any]:
    """The JSON request body schema of POST `path`."""
    op = SPEC["paths"][path]["post"]
    schema: dict[str, Any] = op["requestBody"]["content"]["application/json"]["schema"]
    return schema


async def call_and_check(
    client: TestClient[Any, Any], method: str, path: str, template: str, **kwargs: Any
) -> tuple[int, Any]:
    """Make the call and validate the answer against the documented response."""
    resp = await client.request(method, path, headers=admin_headers(), **kwargs)
    documented = SPEC["paths"][template][method.lower()]["responses"]
    assert str(resp.status) in documented, (path, resp.status, await resp.text())
    content = documented[str(resp.status)]["content"]
    assert resp.content_type in content
    body = await resp.json()
    validator(content[resp.content_type]["schema"]).validate(body)
    return resp.status, body


async def test_every_admin_answer_matches_the_description(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    emulator.state.set_online(["GID_fleet@@@a"])
    emulator.state.register_credential(emulator.instance_id, "GID_fleet@@@a")
    emulator.state.set_iot_client_ids("iot-1", ["GID_fleet@@@a"])
    client = await make_gateway(emulator, iot_endpoint=emulator.url)
    resp = await client.post("/v1/token", headers=bearer(make_jwt("bob")))
    token = (await resp.json())["tokens"][0]["token"]

    calls: list[tuple[str, str, str, dict[str, Any], int]] = [
        ("POST", "/v1/admin/query", "/v1/admin/query", {"json": {"token": token}}, 200),
        ("POST", "/v1/admin/query", "/v1/admin/query", {"json": {"token": "zz"}}, 200),
        ("POST", "/v1/admin/query", "/v1/admin/query", {"json": {}}, 400),
        (
            "GET",
            "/v1/admin/subjects/bob/tokens",
            "/v1/admin/subjects/{subject}/tokens",
            {},
            200,
        ),
        (
            "GET",
            "/v1/admin/sessions/GID_fleet@@@a",
            "/v1/admin/sessions/{clientId}",
            {},
            200,
        ),
        (
            "POST",
            "/v1/admin/sessions:query",
            "/v1/admin/sessions:query",
            {"json": {"clientIds": ["GID_fleet@@@a", "GID_fleet@@@b"]}},
            200,
        ),
        (
            "GET",
            "/v1/admin/groups/GID_fleet/device-credentials?pageSize=1",
            "/v1/admin/groups/{groupId}/device-credentials",
            {},
            200,
        ),
        (
            "GET",
            "/v1/admin/groups/GID_fleet/device-credentials?nextToken=bad",
            "/v1/admin/groups/{groupId}/device-credentials",
            {},
            400,
        ),
        (
            "GET",
            "/v1/admin/iot/devices/iot-1/client-ids",
            "/v1/admin/iot/devices/{iotId}/client-ids",
            {},
            200,
        ),
        (
            "POST",
            "/v1/admin/explain",
            "/v1/admin/explain",
            {"json": {"claims": {"sub": "bob"}}},
            200,
        ),
        (
            "POST",
            "/v1/admin/revoke",
            "/v1/admin/revoke",
            {"json": {"token": token}},
            202,
        ),
        ("GET", "/v1/admin/revocations", "/v1/admin/revocations", {}, 200),
    ]
    for method, path, template, kwargs, expected in calls:
        status, _ = await call_and_check(client, method, path, template, **kwargs)
        assert status == expected, (method, path)


async def test_iot_501_is_described(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    status, body = await call_and_check(
        client,
        "GET",
        "/v1/admin/iot/devices/iot-1/client-ids",
        "/v1/admin/iot/devices/{iotId}/client-ids",
    )
    assert status == 501
    assert body["code"] == "not_configured"


BODIES: list[tuple[str, Any, bool]] = [
    ("/v1/admin/revoke", {"token": "t"}, True),
    ("/v1/admin/revoke", {"token": "t", "blockIssuedBefore": False}, True),
    ("/v1/admin/revoke", {"subject": "s"}, True),
    ("/v1/admin/revoke", {"subject": "s", "blockIssuedBefore": False}, True),
    ("/v1/admin/revoke", {"clientId": "GID_fleet@@@a", "blockIssuedBefore": True}, True),
    ("/v1/admin/revoke", {}, False),
    ("/v1/admin/revoke", {"blockIssuedBefore": True}, False),
    ("/v1/admin/revoke", {"token": "t", "subject": "s"}, False),
    ("/v1/admin/revoke", {"token": "t", "blockIssuedBefore": True}, False),
    ("/v1/admin/revoke", {"subject": "s", "blockIssuedBefore": None}, False),
    ("/v1/admin/revoke", {"subject": ""}, False),
    ("/v1/admin/revoke", {"subject": "a\x00b"}, False),
    ("/v1/admin/revoke", {"subject": None}, False),
    ("/v1/admin/revoke", {"clientId": "nope"}, False),
    ("/v1/admin/revoke", {"subject": "s", "why": "x"}, False),
    ("/v1/admin/revoke", ["subject"], False),
    ("/v1/admin/revoke", {"subject": "s", "graceSeconds": 30}, True),
    ("/v1/admin/revoke", {"subject": "s", "graceSeconds": 3601}, False),
    ("/v1/admin/revoke", {"subject": "s", "graceSeconds": -1}, False),
    ("/v1/admin/revoke", {"claim": {"name": "tenant", "value": ""}}, False),
    ("/v1/admin/revoke", {"claim": {"name": "ten=ant", "value": "a"}}, False),
    ("/v1/admin/revoke", {"claim": {"name": "tenant"}}, False),
    ("/v1/admin/revoke", {"claim": {"name": "tenant", "value": 1}}, False),
    ("/v1/admin/revoke", {"claim": {"name": "tenant", "value": "a", "x": 1}}, False),
    ("/v1/admin/revoke", {"claim": {"name": "tenant", "value": "a"}, "subject": "s"}, False),
    (
        "/v1/admin/revoke",
        {"claim": {"name": "tenant", "value": "a"}, "deviceCredentials": "refresh"},
        False,
    ),
    ("/v1/admin/query", {"token": "t"}, True),
    ("/v1/admin/query", {"token": ""}, False),
    ("/v1/admin/query", {"token": None}, False),
    ("/v1/admin/query", {"token": "t", "x": 1}, False),
    ("/v1/admin/sessions:query", {"clientIds": ["GID_fleet@@@a"]}, True),
    ("/v1/admin/sessions:query", {"clientIds": []}, False),
    ("/v1/admin/sessions:query", {"clientIds": ["GID_ab@@@a"]}, False),
    ("/v1/admin/sessions:query", {"clientIds": ["GID_fleet@@@a"] * 101}, False),
    ("/v1/admin/explain", {"claims": {"sub": "a"}}, True),
    ("/v1/admin/explain", {"claims": {}, "subject": "a"}, True),
    ("/v1/admin/explain", {"claims": {"sub": "a"}, "clientId": "GID_fleet@@@a"}, True),
    ("/v1/admin/explain", {"claims": {}}, False),
    ("/v1/admin/explain", {"claims": {"sub": ""}}, False),
    ("/v1/admin/explain", {"claims": {"sub": 1}}, False),
    ("/v1/admin/explain", {"claims": {"sub": "a"}, "subject": None}, False),
    ("/v1/admin/explain", {"claims": []}, False),
]


@pytest.mark.parametrize(("path", "body", "valid"), BODIES)
async def test_description_and_server_agree_on_bodies(
    emulator: EmulatorHandle, make_gateway: MakeGateway, path: str, body: Any, valid: bool
) -> None:
    assert validator(request_schema(path)).is_valid(body) is valid
    client = await make_gateway(emulator)
    resp = await client.post(path, json=body, headers=admin_headers(now=time.time()))
    if valid:
        assert resp.status in (200, 202), await resp.text()
    else:
        assert resp.status == 400, await resp.text()


async def test_claim_revocation_is_described(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    body = {"claim": {"name": "tenant", "value": "acme"}, "graceSeconds": 30}
    assert validator(request_schema("/v1/admin/revoke")).is_valid(body)
    claim = SPEC["components"]["schemas"]["ClaimValue"]
    assert claim["required"] == ["name", "value"]
    assert claim["additionalProperties"] is False
    # A clock that never moves by itself: the 30 s grace does not end while the test looks.
    clock = ManualClock(start=time.time())
    client = await make_gateway(emulator, clock=clock, revocable_claims=frozenset({"tenant"}))
    await client.post("/v1/token", headers=bearer(make_jwt("bob", tenant="acme")))
    status, answer = await call_and_check(
        client, "POST", "/v1/admin/revoke", "/v1/admin/revoke", json=body
    )
    assert status == 202
    assert answer["revokedLocally"] == 2
    assert "upstreamRevocationAfter" in answer
    status, queue = await call_and_check(
        client, "GET", "/v1/admin/revocations", "/v1/admin/revocations"
    )
    assert queue["delayed"] == 2
    # A claim the gateway does not list: valid by the description, refused by the setting.
    other = {"claim": {"name": "model", "value": "x"}}
    assert validator(request_schema("/v1/admin/revoke")).is_valid(other)
    status, problem = await call_and_check(
        client, "POST", "/v1/admin/revoke", "/v1/admin/revoke", json=other
    )
    assert (status, problem["code"]) == (400, "claim_not_revocable")


def test_admin_operations_are_secured_and_tagged() -> None:
    for path, operations in SPEC["paths"].items():
        if not path.startswith("/v1/admin/"):
            continue
        for op in operations.values():
            assert op["security"] == [{"bearer": []}, {"adminApiKey": []}]
            assert {"401", "403"} <= set(op["responses"])
    assert SPEC["components"]["securitySchemes"]["adminApiKey"]["name"] == "X-API-Key"
