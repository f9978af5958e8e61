"""A policy naming topics by {client_id} without a clientIds list never serves: not at start,
not on a hot reload (the old policy keeps serving); a reload that takes a clientId away
narrows the tokens held under it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from authserver import appkeys
from authserver.policy.loader import parse_policy
from authserver.tokens.model import TokenRecord
from authserver.tokens.narrowing import narrowed
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import IOT_FLEET_POLICY, MakeGateway, bearer, make_jwt
from tests.ops.serving import serve
from tests.ops.test_policy_reload import ConfigMapDir, eventually

BOUND = IOT_FLEET_POLICY.read_text()
UNBOUND = BOUND.replace("\nclientIds:", "\n# clientIds:")
DEVICE = "GID_fleet@@@dev-a"


def test_the_unbound_policy_differs_only_by_its_client_ids() -> None:
    assert UNBOUND != BOUND
    assert "clientIds" not in UNBOUND.replace("# clientIds:", "")


async def test_serve_exits_2_naming_the_entry(emulator: EmulatorHandle, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(UNBOUND)
    async with serve(emulator, AUTHSERVER_POLICY_FILE=str(policy)) as gw:
        assert await asyncio.wait_for(gw.process.wait(), 30) == 2
    text = "\n".join(gw.lines)
    assert "invalid policy" in text
    assert "everyone[0].topics[0]: 't/{claims.tenant}/dev/{client_id}/cmd/#' uses {client_id}" in (
        text
    )


async def test_a_hot_reload_is_refused_and_the_old_policy_keeps_serving(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    config = ConfigMapDir(tmp_path / "config", BOUND)
    client = await make_gateway(emulator, policy_file=config.path, policy_poll_interval=0.05)
    assert client.app is not None
    watcher = client.app[appkeys.POLICY_WATCHER]
    before = client.app[appkeys.POLICY].current.version_id

    config.update(UNBOUND)

    async def refused() -> bool:
        return watcher.failures == 1

    await eventually(refused)
    assert client.app[appkeys.POLICY].current.version_id == before
    assert any("everyone[0].topics[0]" in e and "{client_id}" in e for e in watcher.last_errors)
    # Still the bound policy: the device gets its own topics, and only under its own clientId.
    jwt = make_jwt("dev-a", tenant="acme", device_id="dev-a")
    own = await client.post("/v1/token", headers=bearer(jwt), json={"clientId": DEVICE})
    assert own.status == 200, await own.text()
    other = await client.post(
        "/v1/token", headers=bearer(jwt), json={"clientId": "GID_fleet@@@dev-b"}
    )
    assert other.status == 403
    assert (await other.json())["code"] == "client_id_not_allowed"
    assert (await client.get("/readyz")).status == 200  # a policy is serving


def _record(key: str, client_id: str, resource: str, **claims: Any) -> tuple[str, TokenRecord]:
    record = TokenRecord(
        token=f"t-{key}",
        type="R",
        resources=(resource,),
        expire_ms=2**41,
        refresh_at_ms=2**40,
        issued_ms=0,
        subject="dev-a",
        instance_id="post-cn-test",
        client_id=client_id,
        claims=claims,
    )
    return key, record


async def test_a_reload_that_takes_a_client_id_away_narrows_its_tokens() -> None:
    # The new policy gives each device only GID_fleet@@@<device_id>, no longer <sub>.
    policy = parse_policy(
        "version: 1\nclientIds: ['GID_fleet@@@{claims.device_id}']\n"
        "everyone:\n  - {topics: ['dev/{client_id}/#'], actions: [R]}\n",
        "new.yaml",
    )
    records = [
        _record("k1", "GID_fleet@@@d-1", "dev/GID_fleet@@@d-1/#", device_id="d-1"),
        _record("k2", "GID_fleet@@@dev-a", "dev/GID_fleet@@@dev-a/#", device_id="d-1"),
        _record("k3", "GID_fleet@@@d-2", "dev/GID_fleet@@@d-2/#", device_id="d-1"),
    ]
    doomed = await narrowed(policy, records)
    assert [key for key, _record in doomed] == ["k2", "k3"]
