"""Every endpoint driven at DEBUG: no JWT, MQTT token, access key secret or API key is logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from authserver import appkeys
from authserver.logs import JsonFormatter, TextFormatter
from tests.admin.conftest import API_KEY, admin_jwt
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import JWT_SECRET, MakeGateway, bearer, make_jwt
from tests.helpers import eventually

GROUP = "GID_fleet"


def rendered(record: logging.LogRecord) -> str:
    """A record as every formatter would write it, plus every attribute (extra fields)."""
    parts = [
        logging.Formatter().format(record),
        JsonFormatter().format(record),
        TextFormatter().format(record),
        repr(record.args),
        repr(vars(record)),
    ]
    return "\n".join(parts)


async def test_no_secret_reaches_any_log_record(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    redis_url: str,
    api_keys_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.state.set_iot_client_ids("iot-dev-1", [f"{GROUP}@@@a"])
    client = await make_gateway(
        emulator, redis_url=redis_url, admin_api_keys_file=api_keys_file,
        iot_endpoint=emulator.url,
    )  # fmt: skip
    device = make_jwt("alice", groups=["ops"], tenant="t1")
    other = make_jwt("bob")
    admin = admin_jwt()
    expired = make_jwt("alice", lifetime=-3600)
    forged = make_jwt("alice", secret="another-secret-that-is-long-enough-too!!")
    no_scope = make_jwt("mallory")
    jwts = [device, other, admin, expired, forged, no_scope]
    secrets: set[str] = {JWT_SECRET, API_KEY, emulator.access_key_secret}
    as_admin = bearer(admin)
    with_key = {"X-API-Key": API_KEY}

    async def call(method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
        async with client.request(method, path, headers=headers, **kw) as resp:
            body = await resp.read()
            return resp.status, (await resp.json() if body.startswith(b"{") else None)

    # Devices: success, again from the cache, and every kind of failure.
    status, issued = await call("POST", "/v1/token", bearer(device))
    assert status == 200
    status, again = await call("POST", "/v1/token", bearer(device), json={"ttlSeconds": 600})
    assert status == 200
    status, bobs = await call("POST", "/v1/token", bearer(other))
    assert status == 200
    mqtt = [t["token"] for body in (issued, again, bobs) for t in body["tokens"]]
    secrets.update(mqtt)
    secrets.update(body["password"] for body in (issued, again, bobs))
    for headers in (bearer(expired), bearer(forged), {"Authorization": f"Basic {device}"}):
        assert (await call("POST", "/v1/token", headers))[0] == 401
    assert (await call("POST", "/v1/token", bearer(device), data=b"{bad"))[0] == 400
    # Admins: with a JWT and with an API key; and refused ones.
    assert (await call("POST", "/v1/admin/query", as_admin, json={"token": mqtt[0]}))[0] == 200
    assert (await call("POST", "/v1/admin/query", with_key, json={"token": "nope"}))[0] == 200
    assert (await call("POST", "/v1/admin/revoke", as_admin, json={"token": mqtt[0]}))[0] == 202
    assert (await call("POST", "/v1/admin/revoke", with_key, json={"subject": "bob"}))[0] == 202
    assert (await call("POST", "/v1/admin/query", as_admin, json={"token": mqtt[0]}))[0] == 200
    for path in (
        "/v1/admin/revocations",
        "/v1/admin/subjects/alice/tokens",
        f"/v1/admin/sessions/{GROUP}@@@a",
        f"/v1/admin/groups/{GROUP}/device-credentials",
        "/v1/admin/iot/devices/iot-dev-1/client-ids",
    ):
        assert (await call("GET", path, as_admin))[0] == 200, path
    assert (await call("POST", "/v1/admin/sessions:query", with_key,
                       json={"clientIds": [f"{GROUP}@@@a"]}))[0] == 200  # fmt: skip
    explain = {"claims": {"sub": "alice", "groups": ["ops"], "tenant": "t1"}}
    assert (await call("POST", "/v1/admin/explain", as_admin, json=explain))[0] == 200
    assert (await call("POST", "/v1/admin/revoke", bearer(no_scope), json={"subject": "x"}))[
        0
    ] == 403
    assert (await call("GET", "/v1/admin/revocations", {"X-API-Key": API_KEY + "x"}))[0] == 401
    assert (await call("GET", "/v1/admin/revocations", bearer(expired)))[0] == 401
    # Operations endpoints.
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert (await call("GET", path, {}))[0] == 200, path
    # The revocations drain upstream (their log lines name fingerprints only).
    worker = client.app[appkeys.REVOCATION_WORKER]
    await eventually(lambda: worker.done >= 3)

    records = caplog.records
    assert len(records) > 30  # DEBUG really was on: per-request and upstream lines
    text = "\n".join(rendered(r) for r in records)
    for secret in secrets:
        assert secret not in text
    for token in jwts:
        assert token not in text
        for segment in token.split("."):
            if len(segment) > 16 and not segment.startswith("eyJhbGciOiJIUzI1NiIsInR5cCI6"):
                assert segment not in text  # the claims and the signature, alone too
