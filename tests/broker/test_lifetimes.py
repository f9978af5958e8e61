"""Token lifetimes on the broker: revocation, expiry notices, expiry, `$SYS/uploadToken`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from authserver.clock import ManualClock
from tests.admin.conftest import admin_headers
from tests.broker.conftest import CHAT_POLICY, MakeDevice, broker_of, credentials
from tests.broker.devices import PahoDevice
from tests.fixtures.emulator import MakeEmulator
from tests.fixtures.gateway import MakeGateway, make_jwt
from tests.helpers import eventually
from tests.ops.test_policy_reload import ConfigMapDir

NOTICE = "$SYS/tokenInvalidNotice"
EXPIRE_NOTICE = "$SYS/tokenExpireNotice"
UPLOAD = "$SYS/uploadToken"


async def upload(d: PahoDevice, creds: dict[str, Any]) -> None:
    """Publish every token of `creds` to `$SYS/uploadToken`, each time waiting for the PUBACK."""
    for token in creds["tokens"]:
        await d.acked(UPLOAD, json.dumps({"token": token["token"], "type": token["type"]}))


async def test_admin_revoke_of_a_subject_ends_its_sessions(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    emulator = await make_emulator(mqtt_port=0)
    gateway = await make_gateway(emulator, policy_file=CHAT_POLICY)
    port = broker_of(emulator).port
    alice_creds = await credentials(gateway, make_jwt("alice"))
    bob_creds = await credentials(gateway, make_jwt("bob"))
    alice, bob = device("GID_test@@@alice"), device("GID_test@@@bob")
    assert await alice.connect(port, alice_creds["username"], alice_creds["password"]) == 0
    assert await bob.connect(port, bob_creds["username"], bob_creds["password"]) == 0
    assert await alice.subscribed("chat/#") == [1]

    resp = await gateway.post(
        "/v1/admin/revoke", json={"subject": "alice"}, headers=admin_headers()
    )
    assert resp.status == 202, await resp.text()
    # No PUBLISH or SUBSCRIBE needed: the revocation reaches the idle session by itself.
    [notice] = await alice.got(NOTICE)
    assert notice.json()["code"] == 3
    await alice.gone()
    again = device("GID_test@@@alice")
    assert str(await again.connect(port, alice_creds["username"], alice_creds["password"])) == (
        "Not authorized"
    )
    # Bob's tokens are not alice's: his session goes on.
    await bob.acked("chat/after", b"still here")
    assert not bob.on(NOTICE)
    figures = emulator.state.stats()["broker"]
    assert figures["invalidNotices"] == {"3": 1}
    assert figures["refused"] == {"revoked": 1}


async def test_upload_token_keeps_a_session_alive_across_an_expiry(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(mqtt_port=0, clock=clock, mqtt_check_interval=0.05)
    gateway = await make_gateway(emulator, policy_file=CHAT_POLICY, clock=clock)
    port = broker_of(emulator).port
    jwt = make_jwt("alice", now=clock.time(), lifetime=86400)
    first = await credentials(gateway, jwt)
    keeper, lapser = device("GID_test@@@keeper"), device("GID_test@@@lapser")
    for d in (keeper, lapser):
        assert await d.connect(port, first["username"], first["password"]) == 0
        assert await d.subscribed("chat/#") == [1]

    # At refreshAt the gateway hands out new tokens; only the keeper uploads them.
    clock.advance((first["refreshAt"] - clock.time() * 1000) / 1000 + 1)
    second = await credentials(gateway, jwt)
    assert second["password"] != first["password"]
    await upload(keeper, second)

    # Five minutes ahead of the old tokens' expiry, the lapser is warned, once per token.
    clock.advance((first["expireTime"] - clock.time() * 1000) / 1000 - 250)
    warned = await lapser.got(EXPIRE_NOTICE, count=2)
    assert sorted(n.json()["type"] for n in warned) == ["R", "W"]
    assert {n.json()["expireTime"] for n in warned} == {first["expireTime"]}

    clock.advance(251)
    [expired] = await lapser.got(NOTICE)
    assert expired.json()["code"] == 2
    await lapser.gone()
    # The same sweep judged the keeper: it holds the uploaded tokens and goes on.
    await keeper.acked("chat/room", b"after the first expiry")
    [message] = await keeper.got("chat/room")
    assert message.payload == b"after the first expiry"
    assert not keeper.on(EXPIRE_NOTICE)
    assert not keeper.on(NOTICE)
    figures = emulator.state.stats()["broker"]
    assert figures["uploads"] == 2
    assert figures["expireNotices"] == 2
    assert figures["invalidNotices"] == {"2": 1}


async def test_a_bad_upload_gets_code_1(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    emulator = await make_emulator(mqtt_port=0)
    gateway = await make_gateway(emulator, policy_file=CHAT_POLICY)
    creds = await credentials(gateway, make_jwt("alice"))
    alice = device("GID_test@@@alice")
    assert await alice.connect(broker_of(emulator).port, creds["username"], creds["password"]) == 0
    await alice.publish(UPLOAD, json.dumps({"token": "made-up", "type": "R"}))
    [notice] = await alice.got(NOTICE)
    assert notice.json() == {"code": 1, "type": "R"}
    await alice.gone()
    await eventually(lambda: "GID_test@@@alice" not in emulator.state.connected)


async def test_an_uploaded_token_judges_the_very_next_publish(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    emulator = await make_emulator(mqtt_port=0)
    gateway = await make_gateway(emulator, policy_file=CHAT_POLICY)
    creds = await credentials(gateway, make_jwt("alice"))
    tokens = {t["type"]: t["token"] for t in creds["tokens"]}
    alice = device("GID_test@@@alice")
    port = broker_of(emulator).port
    assert await alice.connect(port, creds["username"], f"R|{tokens['R']}") == 0
    assert await alice.subscribed("devices/alice/#") == [1]
    # Swapped in before the PUBACK: the PUBLISH right after it is judged by the W token.
    await alice.acked(UPLOAD, json.dumps({"token": tokens["W"], "type": "W"}))
    await alice.acked("devices/alice/x", b"now allowed")
    [message] = await alice.got("devices/alice/x")
    assert message.payload == b"now allowed"
    assert not alice.on(NOTICE)


async def test_a_policy_narrowing_ends_the_sessions_of_the_narrowed_tokens(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, device: MakeDevice, tmp_path: Path
) -> None:
    emulator = await make_emulator(mqtt_port=0)
    config = ConfigMapDir(tmp_path / "config", CHAT_POLICY.read_text())
    gateway = await make_gateway(emulator, policy_file=config.path, policy_poll_interval=0.05)
    creds = await credentials(gateway, make_jwt("bob"))
    tokens = {t["type"]: t["token"] for t in creds["tokens"]}
    port = broker_of(emulator).port
    reader, writer = device("GID_test@@@bob-r"), device("GID_test@@@bob-w")
    assert await reader.connect(port, creds["username"], f"R|{tokens['R']}") == 0
    assert await reader.subscribed("broadcast/#") == [1]
    assert await writer.connect(port, creds["username"], f"W|{tokens['W']}") == 0

    # broadcast/# is gone from the policy: bob's R token grants more than it may now.
    config.update(CHAT_POLICY.read_text().replace('["broadcast/#"]', '["broadcast/bob"]'))
    [notice] = await reader.got(NOTICE)
    assert notice.json() == {"code": 3, "type": "R"}
    await reader.gone()
    # The W token was not narrowed: that session goes on.
    await writer.acked("devices/bob/still", b"here")
    assert not writer.on(NOTICE)
    refused = device("GID_test@@@bob-r")
    assert str(await refused.connect(port, creds["username"], f"R|{tokens['R']}")) == (
        "Not authorized"
    )
