"""Every error class of the device endpoint answers problem+json with a stable code."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt


async def problem_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert the response is a problem with this status and code; return its body."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["detail"]
    return body


@pytest.fixture
async def gateway(emulator: EmulatorHandle, make_gateway: MakeGateway) -> TestClient[Any, Any]:
    return await make_gateway(emulator)


async def test_missing_credentials_is_401_with_challenge(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/token")
    await problem_of(resp, 401, "invalid_token")
    # RFC 6750 3.1: no error code when the request carried no credentials at all.
    assert resp.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not.a.jwt", "Bearer a b"],
)
async def test_malformed_credentials_are_401(gateway: TestClient[Any, Any], header: str) -> None:
    resp = await gateway.post("/v1/token", headers={"Authorization": header})
    await problem_of(resp, 401, "invalid_token")
    assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


async def test_expired_and_wrongly_signed_jwts_are_401(gateway: TestClient[Any, Any]) -> None:
    expired = make_jwt("bob", lifetime=-3600)
    await problem_of(await gateway.post("/v1/token", headers=bearer(expired)), 401, "invalid_token")
    forged = make_jwt("bob", secret="another-secret-that-is-long-enough-too!!")
    await problem_of(await gateway.post("/v1/token", headers=bearer(forged)), 401, "invalid_token")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "JSON"),
        (b"[1, 2]", "object"),
        (b'{"topics": "a/b"}', "topics"),
        (b'{"topics": [1]}', "topics"),
        (b'{"topics": []}', "topics"),
        (b'{"actions": ["X"]}', "actions"),
        (b'{"ttlSeconds": "60"}', "ttlSeconds"),
        (b'{"ttlSeconds": 10}', "ttlSeconds"),
        (b'{"ttlSeconds": true}', "ttlSeconds"),
        (b'{"clientId": "not-a-client-id"}', "clientId"),
        (b'{"surprise": 1}', "surprise"),
        (b'{"topics": ["a/#/b"]}', "a/#/b"),
        (b'{"topics": ["a+"]}', "a+"),
    ],
)
async def test_bad_bodies_are_400(
    gateway: TestClient[Any, Any], emulator: EmulatorHandle, body: bytes, fragment: str
) -> None:
    resp = await gateway.post(
        "/v1/token",
        data=body,
        headers={**bearer(make_jwt("bob")), "Content-Type": "application/json"},
    )
    assert resp.status == 400, await resp.text()
    problem = await resp.json()
    assert fragment in problem["detail"]
    assert emulator.state.stats()["calls"].get("ApplyToken", 0) == 0


async def test_deeply_nested_json_is_400(gateway: TestClient[Any, Any]) -> None:
    body = b'{"topics": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    resp = await gateway.post(
        "/v1/token",
        data=body,
        headers={**bearer(make_jwt("bob")), "Content-Type": "application/json"},
    )
    await problem_of(resp, 400, "bad_request")


async def test_too_many_topics_is_refused(gateway: TestClient[Any, Any]) -> None:
    jwt = make_jwt("bob")
    topics = [f"devices/bob/{i}" for i in range(101)]
    resp = await gateway.post("/v1/token", headers=bearer(jwt), json={"topics": topics})
    body = await problem_of(resp, 400, "bad_request")
    assert "at most 100" in body["detail"]
    # 10,000 topics do not fit the body limit: refused before they are parsed.
    topics = [f"devices/bob/{i}" for i in range(10_000)]
    resp = await gateway.post("/v1/token", headers=bearer(jwt), json={"topics": topics})
    await problem_of(resp, 413, "payload_too_large")


async def test_large_body_is_413_before_reading(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post(
        "/v1/token",
        data=io.BytesIO(b"{" + b" " * (1024 * 1024) + b"}"),
        headers={**bearer(make_jwt("bob")), "Content-Type": "application/json"},
    )
    await problem_of(resp, 413, "payload_too_large")


async def test_grant_too_broad_is_422_naming_the_grant(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    rooms = ", ".join(f"'rooms/{i}/+'" for i in range(120))
    policy = tmp_path / "broad.yaml"
    policy.write_text(
        "version: 1\n"
        "everyone:\n  - topics: ['devices/{sub}/#']\n    actions: [R, W]\n"
        f"groups:\n  hotel:\n    - topics: [{rooms}]\n      actions: [R]\n"
    )
    client = await make_gateway(emulator, policy_file=policy)
    resp = await client.post("/v1/token", headers=bearer(make_jwt("eve", groups=["hotel"])))
    body = await problem_of(resp, 422, "grant_too_broad")
    assert "groups.hotel[0]" in body["detail"]
    assert emulator.state.stats()["calls"].get("ApplyToken", 0) == 0


async def test_nothing_granted_is_403(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    policy = tmp_path / "users-only.yaml"
    policy.write_text("version: 1\nusers:\n  alice:\n    - topics: ['a/#']\n      actions: [R]\n")
    client = await make_gateway(emulator, policy_file=policy)
    resp = await client.post("/v1/token", headers=bearer(make_jwt("mallory")))
    await problem_of(resp, 403, "policy_denied")


async def test_template_injection_is_not_a_wildcard(gateway: TestClient[Any, Any]) -> None:
    for subject in ("#", "+", "a/b", "bob/#"):
        resp = await gateway.post("/v1/token", headers=bearer(make_jwt(subject)))
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        resources = [r for t in body["tokens"] for r in t["resources"]]
        assert resources == ["broadcast/#"], (subject, resources)


async def test_upstream_outage_is_503_with_retry_after(
    emulator: EmulatorHandle, gateway: TestClient[Any, Any]
) -> None:
    async with gateway.session.post(
        f"{emulator.url}/_emulator/faults", json={"action": "*", "outage": True}
    ) as resp:
        assert resp.status == 200
    resp = await gateway.post("/v1/token", headers=bearer(make_jwt("bob")))
    await problem_of(resp, 503, "upstream_unavailable")
    assert int(resp.headers["Retry-After"]) >= 1


async def test_upstream_throttling_is_503_with_retry_after(
    emulator: EmulatorHandle, gateway: TestClient[Any, Any]
) -> None:
    async with gateway.session.post(
        f"{emulator.url}/_emulator/faults",
        json={"action": "ApplyToken", "errorCode": "ApplyTokenOverflow", "rate": 1.0},
    ) as resp:
        assert resp.status == 200
    resp = await gateway.post("/v1/token", headers=bearer(make_jwt("bob")))
    assert resp.status in {429, 503}
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["code"] in {"upstream_throttled", "upstream_unavailable"}


async def test_unknown_path_and_method_are_problems(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.get("/nope")
    body = await problem_of(resp, 404, "not_found")
    assert body["detail"] == "there is no such path here (see /openapi.json)"
    assert resp.headers["X-Request-Id"]
    resp = await gateway.get("/v1/token")
    body = await problem_of(resp, 405, "method_not_allowed")
    # A sentence naming what is accepted, not aiohttp's "405: Method Not Allowed".
    assert body["detail"] == (
        "this path does not accept that method; it accepts: POST (see /openapi.json)"
    )
    assert resp.headers["Allow"] == "POST"
    assert resp.headers["X-Request-Id"]
    # Under /v1/admin/ the admin catch-all authenticates first: no probing without a key.
    assert (await gateway.request("PUT", "/v1/admin/revoke")).status == 401
    # A newline in the path (%0A) is still ours to answer, not aiohttp's plain text.
    resp = await gateway.get(URL("/a%0Ab", encoded=True))
    await problem_of(resp, 404, "not_found")
    assert resp.headers["X-Request-Id"]
    assert (await gateway.get(URL("/v1/admin/x%0Ay", encoded=True))).status == 401
