"""The emulator's broker end to end: gateway credentials, paho devices, real sockets."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from authserver.clock import ManualClock
from authserver.emulator.mqtt_auth import sign_client_id
from tests.broker.conftest import CHAT_POLICY, MakeDevice, broker_of, credentials
from tests.emulator.conftest import Caller
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import MakeGateway, make_jwt

NOTICE = "$SYS/tokenInvalidNotice"
EXPIRE_NOTICE = "$SYS/tokenExpireNotice"
UPLOAD = "$SYS/uploadToken"


async def chat_gateway(emulator: EmulatorHandle, make_gateway: MakeGateway, **kw: Any) -> Any:
    """A gateway with the chat policy in front of `emulator`."""
    return await make_gateway(emulator, policy_file=CHAT_POLICY, **kw)


async def emulator_stats(emulator: EmulatorHandle) -> dict[str, Any]:
    """`GET /_emulator/stats` over HTTP."""
    async with aiohttp.ClientSession() as http, http.get(f"{emulator.url}/_emulator/stats") as r:
        stats: dict[str, Any] = await r.json()
        return stats


async def online(emulator: EmulatorHandle, client_id: str) -> bool:
    """QuerySessionByClientId, signed, over HTTP."""
    async with aiohttp.ClientSession() as http:
        answer = await Caller(http, emulator).v1(
            "QuerySessionByClientId", {"ClientId": client_id, "InstanceId": emulator.instance_id}
        )
    assert answer.status == 200, answer.text
    return bool(answer.json["OnlineStatus"])


async def test_devices_talk_within_their_grants(
    mqtt_emulator: EmulatorHandle, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    gateway = await chat_gateway(mqtt_emulator, make_gateway)
    port = broker_of(mqtt_emulator).port
    alice, bob, carol = (device(f"GID_test@@@{n}") for n in ("alice", "bob", "carol"))
    for d, subject in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        creds = await credentials(gateway, make_jwt(subject))
        assert await d.connect(port, creds["username"], creds["password"]) == 0
    assert await alice.subscribed("chat/#") == [1]
    assert await alice.subscribed("devices/alice/inbox") == [1]
    await bob.acked("chat/room", b"hello from bob")
    assert [m.payload for m in await alice.got("chat/room")] == [b"hello from bob"]
    # P2P: carol never subscribed; the message reaches her alone (bob has W on chat/#).
    await bob.acked("chat/p2p/GID_test@@@carol", b"psst")
    assert [m.payload for m in await carol.got("chat/p2p/GID_test@@@carol")] == [b"psst"]
    assert not alice.on("chat/p2p/GID_test@@@carol")
    figures = (await emulator_stats(mqtt_emulator))["broker"]
    assert figures["connections"] == 3
    assert figures["accepted"] == 3
    assert figures["messages"]["p2p"] == 1
    assert figures["messages"]["delivered"] == 1
    # QuerySessionByClientId answers from the live sessions.
    assert await online(mqtt_emulator, "GID_test@@@alice")
    assert not await online(mqtt_emulator, "GID_test@@@nobody")
    alice.close()
    await eventually_offline(mqtt_emulator, "GID_test@@@alice")


async def eventually_offline(emulator: EmulatorHandle, client_id: str) -> None:
    """Wait until the broker has forgotten the session."""
    from tests.helpers import eventually

    await eventually(lambda: client_id not in emulator.state.connected)
    assert not await online(emulator, client_id)


@pytest.mark.parametrize(
    ("action", "topic", "code", "kind"),
    [
        ("subscribe", "devices/bob/#", 4, "R"),  # another device's tree
        ("subscribe", "devices/#", 4, "R"),  # broader than the grant devices/alice/#
        ("subscribe", "#", 4, "R"),
        ("publish", "broadcast/news", 4, "W"),  # R only: no W resource matches
        ("publish", "devices/bob/x", 4, "W"),
        ("publish", "$SYS/broker/load", 4, "W"),
    ],
)
async def test_outside_the_grants_is_refused_with_a_notice(
    mqtt_emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    device: MakeDevice,
    action: str,
    topic: str,
    code: int,
    kind: str,
) -> None:
    gateway = await chat_gateway(mqtt_emulator, make_gateway)
    creds = await credentials(gateway, make_jwt("alice"))
    alice = device("GID_test@@@alice")
    assert (
        await alice.connect(broker_of(mqtt_emulator).port, creds["username"], creds["password"])
        == 0
    )
    if action == "subscribe":
        await alice.subscribe(topic)
    else:
        await alice.publish(topic, b"x")
    [notice] = await alice.got(NOTICE)
    assert notice.json() == {"code": code, "type": kind}
    await alice.gone()
    assert alice.subacks == []
    figures = (await emulator_stats(mqtt_emulator))["broker"]
    assert figures["invalidNotices"] == {str(code): 1}
    assert figures["messages"]["published"] == 0


async def test_a_read_only_password_may_not_publish(
    mqtt_emulator: EmulatorHandle, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    gateway = await chat_gateway(mqtt_emulator, make_gateway)
    creds = await credentials(gateway, make_jwt("alice"))
    read = next(t["token"] for t in creds["tokens"] if t["type"] == "R")
    alice = device("GID_test@@@alice")
    assert await alice.connect(broker_of(mqtt_emulator).port, creds["username"], f"R|{read}") == 0
    await alice.publish("devices/alice/x", b"x")
    [notice] = await alice.got(NOTICE)
    assert notice.json() == {"code": 5, "type": "W"}
    await alice.gone()


async def test_forged_expired_and_foreign_credentials_get_connack_5(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    # Only the emulator's clock is manual: its tokens expire when the test says so.
    clock = ManualClock(start=time.time())
    emulator = await make_emulator(mqtt_port=0, clock=clock)
    gateway = await chat_gateway(emulator, make_gateway)
    creds = await credentials(gateway, make_jwt("alice"), ttlSeconds=120)
    port = broker_of(emulator).port
    user, password = creds["username"], creds["password"]
    read = next(t["token"] for t in creds["tokens"] if t["type"] == "R")
    foreign_user = user.replace(emulator.instance_id, "post-cn-other")
    attempts = [
        ("GID_test@@@a", user, password[:-2] + "xx"),  # forged
        ("GID_test@@@b", user, f"W|{read}"),  # an R token passed off as W
        ("GID_test@@@c", user, f"R|{read}|R|{read}"),  # one token per type
        ("GID_test@@@d", foreign_user, password),  # an unknown instance
        ("GID_test@@@e", user.replace("LTAI", "XXXX"), password),  # an unknown AccessKeyId
        ("no-group-here", user, password),  # not GID_xxx@@@device
        ("GID_test@@@f", f"Signature|{emulator.access_key_id}|{emulator.instance_id}", "bad"),
    ]
    for client_id, username, secret in attempts:
        d = device(client_id)
        assert str(await d.connect(port, username, secret)) == "Not authorized", client_id
        await d.gone()
    clock.advance(121)
    late = device("GID_test@@@late")
    assert str(await late.connect(port, user, password)) == "Not authorized"
    await late.gone()
    refused = (await emulator_stats(emulator))["broker"]["refused"]
    assert refused == {
        "forged": 2,
        "password": 1,
        "instance": 1,
        "access_key": 1,
        "client_id": 1,
        "signature": 1,
        "expired": 1,
    }


async def test_signature_and_device_credential_modes_grant_everything(
    mqtt_emulator: EmulatorHandle, device: MakeDevice
) -> None:
    port = broker_of(mqtt_emulator).port
    owner = device("GID_test@@@owner")
    signature = sign_client_id(mqtt_emulator.access_key_secret, owner.client_id)
    username = f"Signature|{mqtt_emulator.access_key_id}|{mqtt_emulator.instance_id}"
    assert await owner.connect(port, username, signature) == 0
    assert await owner.subscribed("anything/#") == [1]
    credential = mqtt_emulator.state.register_credential(
        mqtt_emulator.instance_id, "GID_test@@@box"
    )
    box = device("GID_test@@@box")
    box_user = f"DeviceCredential|{credential.access_key_id}|{mqtt_emulator.instance_id}"
    box_password = sign_client_id(credential.access_key_secret, "GID_test@@@box")
    assert await box.connect(port, box_user, box_password) == 0
    await box.acked("anything/at/all", b"1")
    await owner.got("anything/at/all")
    # The credential signs one ClientId: another device cannot borrow it.
    thief = device("GID_test@@@thief")
    assert str(await thief.connect(port, box_user, box_password)) == "Not authorized"


@pytest.mark.parametrize("clean_session", [True, False])
async def test_same_client_id_takes_over(
    mqtt_emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    device: MakeDevice,
    clean_session: bool,
) -> None:
    gateway = await chat_gateway(mqtt_emulator, make_gateway)
    creds = await credentials(gateway, make_jwt("alice"))
    port = broker_of(mqtt_emulator).port
    first = device("GID_test@@@alice", clean_session)
    second = device("GID_test@@@alice", clean_session)
    assert await first.connect(port, creds["username"], creds["password"]) == 0
    assert await first.subscribed("chat/#") == [1]
    # A refused connect with the same ClientId does not disturb the live one.
    intruder = device("GID_test@@@alice", clean_session)
    assert str(await intruder.connect(port, creds["username"], "R|forged")) == "Not authorized"
    assert await second.connect(port, creds["username"], creds["password"]) == 0
    await first.gone()
    if clean_session:
        assert await second.subscribed("chat/#") == [1]
    # (A persistent session keeps its subscription across the takeover.)
    await second.acked("chat/x", b"after takeover")
    await second.got("chat/x")
    assert not first.on("chat/x")
    figures = (await emulator_stats(mqtt_emulator))["broker"]
    assert figures["takeovers"] == 1
    assert figures["connections"] == 1


async def test_the_legacy_online_history_follows_broker_sessions(
    mqtt_emulator: EmulatorHandle, device: MakeDevice
) -> None:
    # OnsMqttQueryHistoryOnline answers from the online log: it must see broker sessions, not
    # only the `POST /_emulator/sessions` override.
    from tests.helpers import eventually

    state = mqtt_emulator.state
    unit = device("GID_hist@@@unit1")
    username = f"Signature|{mqtt_emulator.access_key_id}|{mqtt_emulator.instance_id}"
    password = sign_client_id(mqtt_emulator.access_key_secret, unit.client_id)
    assert await unit.connect(broker_of(mqtt_emulator).port, username, password) == 0
    assert unit.client_id in state.online_at(state.now_ms())
    unit.close()
    await eventually(lambda: unit.client_id not in state.online_at(state.now_ms()))
    assert any(unit.client_id in online for _at, online in state.online_log)
