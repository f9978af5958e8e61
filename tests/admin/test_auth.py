"""Admin authentication: every /v1/admin/ route refuses devices, expired JWTs and wrong keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authserver.app import create_app
from authserver.web.admin_auth import ADMIN_PREFIX, ApiKeys, ApiKeysFileError
from tests.admin.conftest import ADMIN_SCOPE, API_KEY, admin_headers, admin_jwt, key_hash
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import (
    AUDIENCE,
    ISSUER,
    JWT_SECRET,
    MakeGateway,
    bearer,
    gateway_settings,
    make_jwt,
)

ANY_PARAM = re.compile(r"\{[^}]+\}")


def admin_routes(client: TestClient[Any, Any]) -> list[tuple[str, str]]:
    """(method, concrete path) of every admin route the router serves."""
    found = []
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        template = info.get("path") or info.get("formatter") or ""
        if template.startswith(ADMIN_PREFIX) and route.method != "HEAD":
            found.append((route.method, ANY_PARAM.sub("GID_x1y@@@d1", template)))
    return found


CREDENTIALS: list[tuple[str, dict[str, str], int, str]] = [
    ("none", {}, 401, "invalid_token"),
    (
        "device JWT",
        bearer(make_jwt("device-1", groups=["ops"], scope="openid")),
        403,
        "admin_scope_required",
    ),
    (
        "expired admin JWT",
        bearer(admin_jwt(now=time.time() - 7200, lifetime=3600)),
        401,
        "invalid_token",
    ),
    ("admin JWT, foreign key", bearer(admin_jwt(secret="x" * 40)), 401, "invalid_token"),
    ("wrong X-API-Key", {"X-API-Key": "not-the-key"}, 401, "invalid_token"),
    ("wrong ApiKey scheme", {"Authorization": "ApiKey not-the-key"}, 401, "invalid_token"),
    ("empty ApiKey", {"Authorization": "ApiKey "}, 401, "invalid_token"),
    ("garbage Authorization", {"Authorization": "Basic Zm9vOmJhcg=="}, 401, "invalid_token"),
]


async def test_every_admin_route_refuses_bad_credentials(
    emulator: EmulatorHandle, make_gateway: MakeGateway, api_keys_file: Path
) -> None:
    client = await make_gateway(emulator, admin_api_keys_file=api_keys_file)
    routes = admin_routes(client)
    # A floor, so a router change that hides the admin routes cannot pass vacuously.
    assert len(routes) >= 8, routes
    for method, path in routes:
        for label, headers, status, code in CREDENTIALS:
            resp = await client.request(method, path, headers=headers, json={})
            assert resp.status == status, (method, path, label, await resp.text())
            assert resp.content_type == "application/problem+json"
            assert (await resp.json())["code"] == code
            if status == 401:
                assert "Bearer" in resp.headers["WWW-Authenticate"]
    assert emulator.state.stats()["calls"] == {}


async def test_unknown_admin_paths_need_auth_first(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    assert (await client.get("/v1/admin/nope")).status == 401
    assert (await client.get("/v1/admin/nope", headers=admin_headers())).status == 404
    assert (await client.delete("/v1/admin/revocations")).status == 401


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": ADMIN_SCOPE},
        {"scope": f"openid profile {ADMIN_SCOPE}"},
        {"scope": f"openid  {ADMIN_SCOPE} "},
        {"scope": None, "roles": ["viewer", ADMIN_SCOPE]},
    ],
)
async def test_admin_scope_or_role_accepted(
    emulator: EmulatorHandle, make_gateway: MakeGateway, claims: dict[str, Any]
) -> None:
    client = await make_gateway(emulator)
    resp = await client.get(
        "/v1/admin/sessions/GID_fleet@@@d1", headers=bearer(make_jwt("root", **claims))
    )
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": f"{ADMIN_SCOPE}x"},
        # RFC 6749 section 3.3: only %x20 separates scope tokens.
        {"scope": f"{ADMIN_SCOPE}\u00a0read"},
        {"scope": f"openid\u00a0{ADMIN_SCOPE}"},
        {"scope": f"{ADMIN_SCOPE}\tx"},
        {"scope": f"openid\n{ADMIN_SCOPE}"},
        {"scope": f"{ADMIN_SCOPE}\u2003x"},
        {"scope": f"\u3000{ADMIN_SCOPE}"},
        {"scope": f"{ADMIN_SCOPE}\x1f"},
        {"scope": [ADMIN_SCOPE]},
        {"roles": ADMIN_SCOPE},
        {"roles": [[ADMIN_SCOPE]]},
        {"role": [ADMIN_SCOPE]},
    ],
)
async def test_near_misses_are_refused(
    emulator: EmulatorHandle, make_gateway: MakeGateway, claims: dict[str, Any]
) -> None:
    client = await make_gateway(emulator)
    resp = await client.get(
        "/v1/admin/sessions/GID_fleet@@@d1", headers=bearer(make_jwt("root", **claims))
    )
    assert resp.status == 403
    assert (await resp.json())["code"] == "admin_scope_required"


def hand_signed(header: bytes, payload: bytes) -> str:
    """An HS256 JWT of raw JSON segments, signed with the gateway's secret (PyJWT dedupes)."""
    head = base64.urlsafe_b64encode(header).rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    mac = hmac.new(JWT_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def admin_payload(*extra_members: str) -> bytes:
    """A valid admin JWT payload for "root", with raw members appended."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600, "sub": "root"}
    text = json.dumps({**claims, "scope": ADMIN_SCOPE})[:-1]
    return (text + "".join(f", {member}" for member in extra_members) + "}").encode()


HS256 = b'{"alg": "HS256", "typ": "JWT"}'


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        # Last one wins in json.loads: a device scope followed by the admin scope.
        (HS256, admin_payload('"scope": "openid"', f'"scope": "{ADMIN_SCOPE}"')),
        (HS256, admin_payload('"sub": "someone-else"')),
        (HS256, admin_payload('"roles": ["viewer"]', f'"roles": ["{ADMIN_SCOPE}"]')),
        (b'{"alg": "none", "alg": "HS256"}', admin_payload()),
        (b'{"alg": "HS256", "typ": "JWT", "typ": "at+jwt"}', admin_payload()),
    ],
    ids=["two scopes", "two subs", "two roles", "two algs", "two typs"],
)
async def test_admin_jwts_with_duplicate_members_are_refused(
    emulator: EmulatorHandle, make_gateway: MakeGateway, header: bytes, payload: bytes
) -> None:
    client = await make_gateway(emulator)
    path = "/v1/admin/sessions/GID_fleet@@@d1"
    control = hand_signed(HS256, admin_payload())
    assert (await client.get(path, headers=bearer(control))).status == 200
    resp = await client.get(path, headers=bearer(hand_signed(header, payload)))
    assert resp.status == 401, await resp.text()
    problem = await resp.json()
    assert problem["code"] == "invalid_token"
    assert "names the same member twice" in problem["detail"]


async def test_configured_scope(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator, admin_scope="ops:root")
    ok = bearer(make_jwt("root", scope="ops:root"))
    assert (await client.get("/v1/admin/sessions/GID_fleet@@@d1", headers=ok)).status == 200
    assert (
        await client.get("/v1/admin/sessions/GID_fleet@@@d1", headers=admin_headers())
    ).status == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": API_KEY},
        {"Authorization": f"ApiKey {API_KEY}"},
        {"Authorization": f"apikey {API_KEY}"},
    ],
)
async def test_api_key_accepted(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    api_keys_file: Path,
    headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await make_gateway(emulator, admin_api_keys_file=api_keys_file)
    with caplog.at_level(logging.INFO, logger="authserver.audit"):
        resp = await client.get("/v1/admin/sessions/GID_fleet@@@d1", headers=headers)
    assert resp.status == 200, await resp.text()
    [line] = [r for r in caplog.records if r.name == "authserver.audit"]
    assert line.audit["actor"] == f"apikey:{key_hash(API_KEY)[:8]}"
    assert API_KEY not in caplog.text


async def test_api_key_without_a_key_file(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    resp = await client.get("/v1/admin/sessions/GID_fleet@@@d1", headers={"X-API-Key": API_KEY})
    assert resp.status == 401
    assert "ADMIN_API_KEYS_FILE" in (await resp.json())["detail"]


def test_key_file_parsing(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    upper = key_hash("second").upper()
    path.write_text(f"\n# comment\n{key_hash('first')}\n   \n{upper}   # trailing comment\n")
    keys = ApiKeys.load(path)
    assert len(keys) == 2
    assert keys.matches("first")
    assert keys.matches("second")
    assert not keys.matches("third")
    assert not keys.matches(key_hash("first"))  # the hash itself is not a key


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not-a-hash\n", "line 1"),
        (f"{key_hash('a')}\n{key_hash('a')[:-1]}\n", "line 2"),
        (f"{key_hash('a')}\n{key_hash('a')}\n", "line 2: the same hash is listed twice"),
        (f"sha256:{key_hash('a')}\n", "line 1"),
        (f"{key_hash('a')} {key_hash('b')}\n", "line 1"),
    ],
)
def test_key_file_errors_name_the_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "keys"
    path.write_text(content)
    with pytest.raises(ApiKeysFileError) as info:
        ApiKeys.load(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_bad_key_file_stops_app_creation(emulator: EmulatorHandle, tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("hunter2\n")
    with pytest.raises(ApiKeysFileError, match="line 1"):
        create_app(gateway_settings(emulator, admin_api_keys_file=path))
    missing = tmp_path / "absent"
    with pytest.raises(ApiKeysFileError, match="cannot be read"):
        create_app(gateway_settings(emulator, admin_api_keys_file=missing))
