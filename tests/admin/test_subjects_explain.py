"""Subject tokens (no values) and the policy explanation with its cached-token check."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt


async def test_subject_tokens_without_values(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    resp = await client.post(
        "/v1/token", headers=bearer(make_jwt("alice", groups=["ops"], tenant="t1"))
    )
    issued = {t["type"]: t for t in (await resp.json())["tokens"]}

    resp = await client.get("/v1/admin/subjects/alice/tokens", headers=admin_headers())
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    for token in issued.values():
        assert token["token"] not in text
    body = json.loads(text)
    assert body["subject"] == "alice"
    listed = {t["type"]: t for t in body["tokens"]}
    assert set(listed) == {"R", "W"}
    for kind, token in issued.items():
        assert listed[kind]["resources"] == token["resources"]
        assert listed[kind]["expireTime"] == token["expireTime"]
        assert len(listed[kind]["fingerprint"]) == 8
        assert "token" not in listed[kind]

    empty = await client.get("/v1/admin/subjects/nobody/tokens", headers=admin_headers())
    assert await empty.json() == {"subject": "nobody", "tokens": []}


async def test_subject_with_odd_characters(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    subject = "user@example.com:42 ü"
    resp = await client.post("/v1/token", headers=bearer(make_jwt(subject)))
    assert resp.status == 200, await resp.text()
    resp = await client.get(
        f"/v1/admin/subjects/{quote(subject, safe='')}/tokens", headers=admin_headers()
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["subject"] == subject
    assert len(body["tokens"]) == 2
    # A subject may hold '/', percent-encoded in the path.
    await client.post("/v1/token", headers=bearer(make_jwt("a/b")))
    slashed = await client.get("/v1/admin/subjects/a%2Fb/tokens", headers=admin_headers())
    assert slashed.status == 200
    body = await slashed.json()
    assert body["subject"] == "a/b"
    assert [t["resources"] for t in body["tokens"]] == [["broadcast/#"]]


async def test_explain_before_and_after_issuance(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    claims: dict[str, Any] = {"sub": "alice", "groups": ["ops"], "tenant": "t1"}

    resp = await client.post("/v1/admin/explain", json={"claims": claims}, headers=admin_headers())
    assert resp.status == 200, await resp.text()
    before = await resp.json()
    assert before["subject"] == "alice"
    assert before["read"] == ["alerts/#", "broadcast/#", "devices/alice/#", "fleet/t1/+/status"]
    assert before["write"] == ["devices/alice/#"]
    assert [m["rule"] for m in before["matched"]] == [
        "everyone[0]",
        "everyone[1]",
        "groups.ops[0]",
        "users.alice[0]",
    ]
    assert before["groups"]["matched"] == ["ops"]
    assert [c["cached"] for c in before["cachedTokens"]] == [False, False]

    await client.post("/v1/token", headers=bearer(make_jwt("alice", groups=["ops"], tenant="t1")))
    after = await (
        await client.post("/v1/admin/explain", json={"claims": claims}, headers=admin_headers())
    ).json()
    cached = {c["type"]: c for c in after["cachedTokens"]}
    assert cached["R"]["cached"] is True
    assert cached["W"]["cached"] is True
    assert len(cached["R"]["fingerprint"]) == 8

    # Without the group the grant differs, so the cached tokens do not fit it.
    other = await (
        await client.post(
            "/v1/admin/explain", json={"claims": {"sub": "alice"}}, headers=admin_headers()
        )
    ).json()
    assert "fleet/t1/+/status" not in other["read"]
    assert {c["type"]: c["cached"] for c in other["cachedTokens"]}["R"] is False


async def test_explain_subject_and_client_id(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    resp = await client.post(
        "/v1/admin/explain",
        json={"claims": {}, "subject": "bob", "clientId": "GID_fleet@@@bob-1"},
        headers=admin_headers(),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["subject"] == "bob"
    assert body["clientId"] == "GID_fleet@@@bob-1"
    assert "devices/bob/#" in body["read"]


async def test_explain_refusals_are_explained(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    resp = await client.post(
        "/v1/admin/explain",
        json={"claims": {"sub": "mallory", "groups": ["ops"], "tenant": "+"}},
        headers=admin_headers(),
    )
    body = await resp.json()
    assert not any("+" in t.split("/")[1] for t in body["read"] if t.startswith("fleet/"))
    assert body["refused"]


async def test_explain_body_is_strict(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    bodies: list[dict[str, Any]] = [
        {},
        {"claims": []},
        {"claims": {}},  # no subject anywhere
        {"claims": {"sub": 5}},
        {"claims": {"sub": "a"}, "subject": None},
        {"claims": {"sub": "a"}, "clientId": "bad"},
        {"claims": {"sub": "a"}, "extra": True},
    ]
    for body in bodies:
        resp = await client.post("/v1/admin/explain", json=body, headers=admin_headers())
        assert resp.status == 400, body
        assert resp.content_type == "application/problem+json"
