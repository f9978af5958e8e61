"""Every answer is a declared shape: its schema is generated from it, and real answers fit it."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from authserver.web import shapes
from tests.admin.test_manage import POLICY
from tests.admin.test_openapi import SPEC, call_and_check
from tests.admin.test_reports import FAST
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt

BY_NAME: dict[str, type[msgspec.Struct]] = {shape.__name__: shape for shape in shapes.SHAPES}
REF = "#/components/schemas/"


def answer_shape(template: str, method: str, status: int) -> type[msgspec.Struct]:
    """The shape the description names for this answer; fails on a schema written by hand."""
    response = SPEC["paths"][template][method.lower()]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    assert set(schema) == {"$ref"}, (template, method, schema)
    name = schema["$ref"].removeprefix(REF)
    assert name in BY_NAME, f"{method} {template} answers {name}, which is not a shape"
    return BY_NAME[name]


def test_every_component_is_generated_from_the_shapes() -> None:
    # No schema in the description is a dict written by hand: all come from shapes.schemas().
    assert SPEC["components"]["schemas"] == shapes.schemas()


def test_every_success_answer_of_the_api_is_a_shape() -> None:
    for template, operations in SPEC["paths"].items():
        if not template.startswith("/v1/"):
            continue  # health, metrics and this document answer free-form objects
        for method, operation in operations.items():
            for status in operation["responses"]:
                if status.startswith("2"):
                    answer_shape(template, method, int(status))


CID = "GID_fleet@@@s1"
DEVICE = bearer(make_jwt("s1", groups=["sensors"]))
# (method, path, its template, request keywords, documented status); {token}: a live token.
CALLS: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("POST", "/v1/admin/query", "/v1/admin/query", {"json": {"token": "{token}"}}, 200),
    ("GET", "/v1/admin/subjects/s1/tokens", "/v1/admin/subjects/{subject}/tokens", {}, 200),
    ("POST", "/v1/admin/explain", "/v1/admin/explain", {"json": {"claims": {"sub": "s1"}}}, 200),
    ("GET", "/v1/admin/sessions/GID_fleet@@@a", "/v1/admin/sessions/{clientId}", {}, 200),
    (
        "POST",
        "/v1/admin/sessions:query",
        "/v1/admin/sessions:query",
        {"json": {"clientIds": ["GID_fleet@@@a", "GID_fleet@@@b"]}},
        200,
    ),
    (
        "GET",
        "/v1/admin/groups/GID_fleet/device-credentials",
        "/v1/admin/groups/{groupId}/device-credentials",
        {},
        200,
    ),
    (
        "GET",
        "/v1/admin/iot/devices/iot-1/client-ids",
        "/v1/admin/iot/devices/{iotId}/client-ids",
        {},
        200,
    ),
    (
        "GET",
        f"/v1/admin/device-credentials/{CID}",
        "/v1/admin/device-credentials/{clientId}",
        {},
        200,
    ),
    (
        "POST",
        f"/v1/admin/device-credentials/{CID}/refresh",
        "/v1/admin/device-credentials/{clientId}/refresh",
        {},
        200,
    ),
    ("GET", "/v1/admin/groups", "/v1/admin/groups", {}, 200),
    ("POST", "/v1/admin/groups", "/v1/admin/groups", {"json": {"groupId": "GID_new"}}, 201),
    ("DELETE", "/v1/admin/groups/GID_new", "/v1/admin/groups/{groupId}", {}, 200),
    (
        "POST",
        "/v1/admin/messages",
        "/v1/admin/messages",
        {"json": {"topic": "fleet/a/cmd", "payload": "x"}},
        202,
    ),
    ("GET", "/v1/admin/clients/GID_fleet@@@a", "/v1/admin/clients/{clientId}", {}, 200),
    ("GET", "/v1/admin/groups/GID_fleet/online", "/v1/admin/groups/{groupId}/online", {}, 200),
    (
        "GET",
        "/v1/admin/groups/GID_fleet/online-history",
        "/v1/admin/groups/{groupId}/online-history",
        {},
        200,
    ),
    ("GET", "/v1/admin/topics/online?topic=fleet", "/v1/admin/topics/online", {}, 200),
    ("GET", "/v1/admin/topics/messages?topic=fleet", "/v1/admin/topics/messages", {}, 200),
    ("GET", "/v1/admin/revocations", "/v1/admin/revocations", {}, 200),
    (
        "DELETE",
        f"/v1/admin/device-credentials/{CID}",
        "/v1/admin/device-credentials/{clientId}",
        {},
        200,
    ),
    ("POST", "/v1/admin/revoke", "/v1/admin/revoke", {"json": {"token": "{token}"}}, 202),
]


def fill(value: Any, token: str) -> Any:
    """`value` with the live token where it says {token}."""
    if value == "{token}":
        return token
    if isinstance(value, dict):
        return {k: fill(v, token) for k, v in value.items()}
    return value


def assert_is_shape(body: Any, shape: type[msgspec.Struct]) -> None:
    """`body` decodes as `shape`, and holds no field the shape does not declare."""
    msgspec.convert(body, shape)
    assert set(body) <= set(shape.__struct_encode_fields__), (shape.__name__, body)


@pytest.fixture
async def gateway(emulator: EmulatorHandle, make_gateway: MakeGateway) -> TestClient[Any, Any]:
    state = emulator.state
    state.set_online(["GID_fleet@@@a"])
    state.subscriptions["GID_fleet@@@a"] = {"fleet/+/cmd": 1}
    state.set_iot_client_ids("iot-1", ["GID_fleet@@@a"])
    return await make_gateway(
        emulator,
        policy_file=POLICY,
        iot_endpoint=emulator.url,
        ons_endpoint=emulator.url,
        quota=FAST,
    )


async def test_real_answers_of_every_route_are_their_shapes(
    gateway: TestClient[Any, Any],
) -> None:
    resp = await gateway.post("/v1/token", headers=DEVICE)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert_is_shape(answer, answer_shape("/v1/token", "POST", 200))
    token = answer["tokens"][0]["token"]
    # The device's own credential login: a password, never kept along the way.
    resp = await gateway.post("/v1/device-credential", json={"clientId": CID}, headers=DEVICE)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert_is_shape(await resp.json(), answer_shape("/v1/device-credential", "POST", 200))

    routes = {
        (route.method, route.resource.canonical): route.name
        for route in gateway.app.router.routes()
        if route.name and route.name.startswith("admin.") and route.resource is not None
    }
    called: set[str | None] = set()
    for method, path, template, kwargs, status in CALLS:
        got, body = await call_and_check(gateway, method, path, template, **fill(kwargs, token))
        assert got == status, (method, path, body)
        assert_is_shape(body, answer_shape(template, method, status))
        called.add(routes.get((method, template)))
    # A new admin route fails here until its answer is declared, documented and called.
    assert called == set(routes.values())


def test_a_device_credential_answer_names_no_secret() -> None:
    fields = shapes.DeviceCredential.__struct_encode_fields__
    assert [f for f in fields if "secret" in f.lower()] == ["secretFingerprint"]
    assert shapes.schemas()["DeviceCredential"]["additionalProperties"] is False
