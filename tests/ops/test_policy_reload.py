"""Hot policy reload: a ConfigMap-style symlink swap is applied, a broken file kept out, and a
narrowing revokes the cached tokens that grant more than the new policy."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from authserver import appkeys
from authserver.policy.loader import parse_policy
from authserver.tokens.model import TokenRecord
from authserver.tokens.narrowing import narrowed
from authserver.web.observe import reload_policy
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.helpers import eventually
from tests.ops.helpers import scrape, value

WIDE = """version: 1
groupsClaim: groups
everyone:
  - topics: ["devices/{sub}/#"]
    actions: [R, W]
  - topics: ["broadcast/#"]
    actions: [R]
groups:
  ops:
    - topics: ["fleet/{claims.tenant}/+/status"]
      actions: [R]
"""
NARROW = """version: 1
groupsClaim: groups
everyone:
  - topics: ["devices/{sub}/#"]
    actions: [R, W]
"""
WIDER = (
    WIDE
    + """users:
  bob:
    - topics: ["alerts/#"]
      actions: [R]
"""
)


class ConfigMapDir:
    """A directory laid out the way the kubelet mounts a ConfigMap, updated the same way."""

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()
        self.update(text)
        (root / "policy.yaml").symlink_to("..data/policy.yaml")

    @property
    def path(self) -> Path:
        """What AUTHSERVER_POLICY_FILE names."""
        return self.root / "policy.yaml"

    def update(self, text: str) -> None:
        """Write a new timestamped directory and swap `..data` to it atomically."""
        self.generation += 1
        version = self.root / f"..2026_01_01_00_00_{self.generation:02d}.000000001"
        version.mkdir()
        (version / "policy.yaml").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.root / "..data")


async def read_tokens(client: TestClient[Any, Any], jwt: str) -> dict[str, list[str]]:
    """The resources per token type the gateway hands out for `jwt`."""
    resp = await client.post("/v1/token", headers=bearer(jwt))
    assert resp.status == 200, await resp.text()
    return {t["type"]: t["resources"] for t in (await resp.json())["tokens"]}


async def test_configmap_swap_is_applied_by_the_poller(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    config = ConfigMapDir(tmp_path / "config", WIDE)
    client = await make_gateway(emulator, policy_file=config.path, policy_poll_interval=0.2)
    jwt = make_jwt("bob")
    assert "alerts/#" not in (await read_tokens(client, jwt))["R"]

    config.update(WIDER)

    async def applied() -> bool:
        return "alerts/#" in (await read_tokens(client, jwt))["R"]

    await eventually(applied)
    text = await scrape(client)
    assert value(text, "authserver_policy_reloads_total") == 1
    assert value(text, "authserver_policy_last_reload_success") == 1
    assert client.app is not None
    version = client.app[appkeys.POLICY].current.version_id
    assert value(text, "authserver_policy_info", version=version) == 1


async def test_broken_file_is_kept_out(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    config = ConfigMapDir(tmp_path / "config", WIDE)
    client = await make_gateway(emulator, policy_file=config.path, policy_poll_interval=0.05)
    assert client.app is not None
    watcher = client.app[appkeys.POLICY_WATCHER]
    before = client.app[appkeys.POLICY].current.version_id

    config.update(WIDE + "users:\n  bob: {topics: oops}\n")

    async def refused() -> bool:
        return watcher.failures == 1

    await eventually(refused)
    assert client.app[appkeys.POLICY].current.version_id == before
    assert watcher.last_errors
    assert (await read_tokens(client, make_jwt("bob")))["R"] == ["broadcast/#", "devices/bob/#"]
    text = await scrape(client)
    assert value(text, "authserver_policy_reload_failures_total") == 1
    assert value(text, "authserver_policy_last_reload_success") == 0
    assert value(text, "authserver_policy_info", version=before) == 1
    # Readiness does not drop: the old policy still serves.
    assert (await client.get("/readyz")).status == 200
    # The same broken file is not retried on every poll (polled here, not waited for).
    for _ in range(3):
        await watcher.poll()
    assert watcher.failures == 1

    config.update(WIDER)

    async def recovered() -> bool:
        return watcher.reloads == 1

    await eventually(recovered)
    text = await scrape(client)
    assert value(text, "authserver_policy_last_reload_success") == 1


async def test_forced_reload_reads_an_in_place_edit(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(WIDE)
    # Polling effectively off: only the forced reload (what SIGHUP calls) can see the edit.
    client = await make_gateway(emulator, policy_file=path, policy_poll_interval=3600)
    assert client.app is not None
    path.write_text(WIDER)
    reload_policy(client.app)

    async def applied() -> bool:
        return client.app is not None and client.app[appkeys.POLICY_WATCHER].reloads == 1

    await eventually(applied)
    assert "alerts/#" in (await read_tokens(client, make_jwt("bob")))["R"]


async def test_narrowing_revokes_cached_tokens_that_grant_more(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    config = ConfigMapDir(tmp_path / "config", WIDE)
    client = await make_gateway(emulator, policy_file=config.path, policy_poll_interval=0.05)
    assert client.app is not None
    bob = await (await client.post("/v1/token", headers=bearer(make_jwt("bob")))).json()
    alice_jwt = make_jwt("alice", groups=["ops"], tenant="t1")
    alice = await (await client.post("/v1/token", headers=bearer(alice_jwt))).json()
    tokens = {
        (who, t["type"]): t
        for who, body in (("bob", bob), ("alice", alice))
        for t in body["tokens"]
    }
    # R tokens carry broadcast/# (and alice's fleet topic); W tokens only devices/<sub>/#.
    assert set(tokens) == {("bob", "R"), ("bob", "W"), ("alice", "R"), ("alice", "W")}

    config.update(NARROW)
    watcher = client.app[appkeys.POLICY_WATCHER]

    async def swept() -> bool:
        return watcher.narrowed == 2

    await eventually(swept)

    async def revoked_upstream() -> bool:
        return all(
            emulator.state.is_revoked(tokens[(who, "R")]["token"]) for who in ("bob", "alice")
        )

    await eventually(revoked_upstream)
    for who in ("bob", "alice"):
        assert not emulator.state.is_revoked(tokens[(who, "W")]["token"])
    # Read and write are now the same set: the next request gets one RW token for it.
    again = await (await client.post("/v1/token", headers=bearer(make_jwt("bob")))).json()
    assert [(t["type"], t["resources"]) for t in again["tokens"]] == [("RW", ["devices/bob/#"])]
    text = await scrape(client)
    assert value(text, "authserver_policy_narrowing_revocations_total") == 2


def _record(subject: str, kind: str, resources: tuple[str, ...], **claims: Any) -> TokenRecord:
    return TokenRecord(
        token=f"t-{subject}-{kind}",
        type=kind,
        resources=resources,
        expire_ms=2**41,
        refresh_at_ms=2**40,
        issued_ms=0,
        subject=subject,
        instance_id="post-cn-test",
        claims=claims,
    )


async def test_narrowed_uses_the_records_claims_and_type() -> None:
    policy = parse_policy(
        "version: 1\ngroupsClaim: groups\n"
        "everyone:\n  - topics: ['devices/{sub}/#']\n    actions: [R, W]\n"
        "groups:\n  ops:\n    - topics: ['fleet/{claims.tenant}/#']\n      actions: [R]\n",
        "test",
    )
    records = [
        ("k1", _record("ann", "R", ("fleet/t1/#",), groups=["ops"], tenant="t1")),  # still ok
        ("k2", _record("ann", "R", ("fleet/t2/#",), groups=["ops"], tenant="t2")),  # ok too
        ("k3", _record("ann", "R", ("fleet/t1/#",), tenant="t1")),  # not in ops any more
        ("k4", _record("ann", "W", ("fleet/t1/#",), groups=["ops"], tenant="t1")),  # R only
        ("k5", _record("ann", "RW", ("devices/ann/#",))),  # both granted
        ("k6", _record("ann", "RW", ("devices/ann/x",))),  # inside the grant
        ("k7", _record("ann", "RW", ("devices/bob/#",))),  # another subject's topics
    ]
    doomed = await narrowed(policy, records)
    assert [key for key, _record in doomed] == ["k3", "k4", "k7"]


BY_SUBJECT = """version: 1
groupsClaim: groups
everyone:
  - topics: ["devices/{sub}/#"]
    actions: [R, W]
"""
# The grant moves onto a claim the old policy never read.
BY_DEVICE_CLAIM = """version: 1
groupsClaim: groups
everyone:
  - topics: ["devices/{claims.device_id}/#"]
    actions: [R, W]
"""


async def test_narrowing_reads_a_claim_the_old_policy_did_not(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path, store_url: str | None
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(BY_SUBJECT)
    client = await make_gateway(
        emulator, policy_file=path, policy_poll_interval=3600, redis_url=store_url
    )
    assert client.app is not None
    # kim's device_id claim is kim: the new policy still grants devices/kim/#. lee's is not.
    kim = await read_rw_token(client, make_jwt("kim", device_id="kim"))
    lee = await read_rw_token(client, make_jwt("lee", device_id="lee-2"))

    path.write_text(BY_DEVICE_CLAIM)
    reload_policy(client.app)
    watcher = client.app[appkeys.POLICY_WATCHER]

    async def swept() -> bool:
        return watcher.narrowed > 0 and emulator.state.is_revoked(lee)

    await eventually(swept, within=5.0)

    async def drained() -> bool:
        resp = await client.get("/v1/admin/revocations", headers=admin_headers())
        return bool((await resp.json())["depth"] == 0)

    await eventually(drained, within=5.0)
    assert watcher.narrowed == 1
    assert not emulator.state.is_revoked(kim)
    assert await client.app[appkeys.TOKENS].lookup(kim) is not None


async def read_rw_token(client: TestClient[Any, Any], jwt: str) -> str:
    """The one RW token the gateway hands `jwt` (read and write grants are equal)."""
    resp = await client.post("/v1/token", headers=bearer(jwt))
    assert resp.status == 200, await resp.text()
    (token,) = (await resp.json())["tokens"]
    assert token["type"] == "RW"
    return str(token["token"])


async def test_narrowed_revokes_what_too_few_kept_claims_cannot_prove() -> None:
    broadcast = '  - topics: ["broadcast/#"]\n    actions: [R]\n'
    policy = parse_policy(BY_DEVICE_CLAIM + broadcast, "test")
    cut = frozenset({"groups"})  # kept under a policy that read only the groups claim
    records = [
        # Whole claim sets: judged exactly.
        ("k1", _record("kim", "RW", ("devices/kim/#",), device_id="kim")),
        ("k2", _record("lee", "RW", ("devices/lee/#",), device_id="lee-2")),
        # Cut claim sets lacking device_id: nothing proves devices/kim/# still allowed.
        ("k3", dataclasses.replace(_record("kim", "RW", ("devices/kim/#",)), claim_names=cut)),
        # ... while a cut record within what the known claims grant stays.
        ("k4", dataclasses.replace(_record("kim", "R", ("broadcast/#",)), claim_names=cut)),
    ]
    doomed = await narrowed(policy, records)
    assert [key for key, _record in doomed] == ["k2", "k3"]
