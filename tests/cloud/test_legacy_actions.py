"""The legacy Ons management API (001) through the client against the emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from authserver.cloud.client import CloudClient, make_session
from authserver.cloud.credentials import Credentials
from authserver.cloud.errors import CloudRejected, UpstreamThrottled
from authserver.cloud.quota import DEFAULT_LIMITS, QuotaGovernor
from authserver.errors import NotConfigured
from tests.fixtures.emulator import EmulatorHandle

LEGACY = [a for a in DEFAULT_LIMITS if a.startswith("OnsMqtt")]
MINUTE_MS = 60_000


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    session = make_session()
    yield session
    await session.close()


def client_of(
    http: aiohttp.ClientSession, emulator: EmulatorHandle, *, fast: bool = True
) -> CloudClient:
    # The documented 30 calls a minute would space a test's calls by two seconds.
    limits = dict.fromkeys(LEGACY, 1000.0) if fast else None
    return CloudClient(
        http,
        Credentials(emulator.access_key_id, emulator.access_key_secret),
        endpoint=emulator.url,
        ons_endpoint=emulator.url,
        governor=QuotaGovernor(limits),
        backoff_base=0.01,
    )


def test_thirty_a_minute_each() -> None:
    assert len(LEGACY) == 8
    assert all(DEFAULT_LIMITS[a] == 0.5 for a in LEGACY)


async def test_groups_share_the_instance_with_the_new_api(
    http: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(http, emulator)
    iid = emulator.instance_id
    await client.ons_create_group_id(iid, "GID_legacy", topic="fleet")
    await client.create_group_id(iid, "GID_new")
    with pytest.raises(CloudRejected) as dup:
        await client.ons_create_group_id(iid, "GID_new")
    assert dup.value.vendor_code == "GroupIdAlreadyExsited"
    with pytest.raises(CloudRejected) as bad:
        await client.ons_create_group_id(iid, "legacy")
    assert bad.value.vendor_code == "ParameterFieldCheckFailed"
    listed = await client.ons_list_group_ids(iid)
    assert sorted(g.group_id for g in listed) == ["GID_legacy", "GID_new"]
    await client.ons_delete_group_id(iid, "GID_legacy")
    assert [g.group_id for g in await client.list_group_ids(iid)] == ["GID_new"]


async def test_online_counts_detail_and_history(
    http: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(http, emulator)
    iid, state = emulator.instance_id, emulator.state
    state.set_online(["GID_fleet@@@1", "GID_fleet@@@2", "GID_lab@@@1"])
    start = state.online_log[-1][0]  # when the online set took effect
    state.subscriptions["GID_fleet@@@1"] = {"fleet/+/cmd": 1, "alerts": 0}
    state.subscriptions["GID_lab@@@1"] = {"fleet/d1/cmd": 0}
    state.subscriptions["GID_fleet@@@3"] = {"fleet/#": 0}  # offline: not counted
    state.client_sessions["GID_fleet@@@1"].address = "/10.0.0.7:50255"
    assert await client.ons_clients_by_group(iid, "GID_fleet") == 2
    assert await client.ons_clients_by_group(iid, "GID_none") == 0
    assert await client.ons_clients_by_topic(iid, "fleet", "/d1/cmd") == 2
    assert await client.ons_clients_by_topic(iid, "fleet") == 2
    assert await client.ons_clients_by_topic(iid, "alerts") == 1
    detail = await client.ons_client_detail(iid, "GID_fleet@@@1")
    assert (detail.client_id, detail.online, detail.address) == (
        "GID_fleet@@@1",
        True,
        "/10.0.0.7:50255",
    )
    assert detail.last_touch_ms >= start
    assert detail.subscriptions == (("alerts", None, 0), ("fleet", "/+/cmd", 1))
    offline = await client.ons_client_detail(iid, "GID_zzz@@@9")
    assert (offline.online, offline.subscriptions) == (False, ())
    history = await client.ons_history_online(iid, "GID_fleet", start, start + 2 * MINUTE_MS)
    assert history.title == "客户端连接数"
    assert [x for x, _ in history.points] == [start, start + MINUTE_MS, start + 2 * MINUTE_MS]
    assert [y for _, y in history.points] == [2.0, 2.0, 2.0]
    before = await client.ons_history_online(iid, "GID_fleet", start - MINUTE_MS, start - 1)
    assert [y for _, y in before.points] == [0.0]
    with pytest.raises(CloudRejected) as backwards:
        await client.ons_history_online(iid, "GID_fleet", start, start - 1)
    assert backwards.value.vendor_code == "InvalidParameter.EndTime"


async def test_message_volume_of_a_topic(
    http: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(http, emulator)
    iid, state = emulator.instance_id, emulator.state
    state.set_online(["GID_fleet@@@1", "GID_fleet@@@2"])
    start = state.online_log[-1][0]  # when the online set took effect
    state.subscriptions["GID_fleet@@@1"] = {"fleet/#": 0}
    state.subscriptions["GID_fleet@@@2"] = {"fleet/d1/cmd": 0}
    for topic in ("fleet/d1/cmd", "fleet/d2/cmd", "fleet/p2p/GID_fleet@@@1", "other/x"):
        await client.send_message(iid, topic, "m")
    end = start + MINUTE_MS - 1

    async def total(**kw: object) -> float:
        series = await client.ons_msg_trans_trend(iid, "fleet", start, end, **kw)  # type: ignore[arg-type]
        return sum(y for _, y in series.points)

    assert await total() == 3
    assert await total(trans_type="SUB") == 2 + 1 + 1
    assert await total(sub_topic="/d1/cmd") == 1
    assert await total(msg_type="P2P") == 1
    assert await total(msg_type="SUB") == 2
    assert await total(qos=1) == 0
    tps = await client.ons_msg_trans_trend(iid, "fleet", start, end, tps_type="TPS")
    assert tps.y_unit == "条/秒"
    assert sum(y for _, y in tps.points) == pytest.approx(3 / 60)
    with pytest.raises(CloudRejected) as bad:
        await client.ons_msg_trans_trend(iid, "fleet/x", start, end)
    assert bad.value.vendor_code == "InvalidParameter.ParentTopic"


async def test_the_governor_keeps_thirty_a_minute(
    http: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(http, emulator, fast=False)
    await client.ons_clients_by_group(emulator.instance_id, "GID_fleet", deadline=0.5)
    with pytest.raises(UpstreamThrottled) as info:
        await client.ons_clients_by_group(emulator.instance_id, "GID_fleet", deadline=0.5)
    assert info.value.retry_after > 0.5
    assert emulator.state.stats()["calls"]["OnsMqttQueryClientByGroupId"] == 1


async def test_without_an_ons_endpoint(
    http: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = CloudClient(
        http, Credentials(emulator.access_key_id, emulator.access_key_secret), endpoint=emulator.url
    )
    with pytest.raises(NotConfigured):
        await client.ons_list_group_ids(emulator.instance_id)
