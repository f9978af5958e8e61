"""AUTHSERVER_REVOCATION_MIN_REPLICAS: an accepted revocation is on a replica, or it is a 503.

Real redis-server processes: a master with one replica (`--replicaof`), a replica frozen with
SIGSTOP (it stays connected, but acknowledges nothing), a master without any replica, and the
replicated Redis Cluster. A frozen replica also tells whether WAIT went out where the jobs
were written: on a node (or an older connection) that wrote nothing since its replica's last
acknowledgement, WAIT counts the replica at once. The cluster test makes the default node a
master that does not own the stream, which catches a WAIT not routed to the stream's node; a
single server's pool hands the pipeline's connection back to the next command, so there the
same connection is kept by construction (WAIT is the pipeline's last command), not by a test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from authserver.errors import RevocationNotReplicated
from authserver.redis_conn import open_redis
from authserver.tokens.revocation import STREAM, RedisState
from authserver.tokens.revocation.state import DELAYED
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.fixtures.redis import RedisServer, free_port
from tests.fixtures.redis_cluster import RedisCluster
from tests.helpers import eventually

# Short: every test that expects a 503 waits this long for a replica that never answers.
TIMEOUT_MS = 200


def _replication(port: int) -> dict[str, Any]:
    with redis.Redis(port=port, socket_timeout=2) as client:
        info: dict[str, Any] = client.info("replication")
        return info


def _wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    pytest.fail(f"never reached: {what}")


@pytest.fixture
def master(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone."""
    server = RedisServer(port=free_port(), workdir=tmp_path / "master")
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def replica(master: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A replica of `master`, in sync; thawed (SIGCONT) and stopped at the end."""
    server = RedisServer(
        port=free_port(),
        workdir=tmp_path / "replica",
        extra_args=("--replicaof", "127.0.0.1", str(master.port)),
    )
    server.workdir.mkdir()
    server.start()
    try:
        _wait_until(
            lambda: (
                _replication(server.port).get("master_link_status") == "up"
                and _replication(master.port).get("connected_slaves") == 1
            ),
            "the replica in sync with its master",
        )
        yield server
    finally:
        if server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """SIGSTOP the server: its connections stay open, it answers (and acknowledges) nothing."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def _queued(port: int, *, cluster: bool = False) -> int:
    """Jobs queued or held back on one server (a cluster replica reads after READONLY)."""
    with redis.Redis(port=port, socket_timeout=2) as client:
        if cluster:
            client.execute_command("READONLY")
        return int(client.xlen(STREAM)) + int(client.zcard(DELAYED))


def _acknowledged(port: int) -> bool:
    """Whether the master counts its replica as having every write it made."""
    info = _replication(port)
    return int(info["slave0"]["offset"]) >= int(info["master_repl_offset"])


def _waits(port: int) -> int:
    with redis.Redis(port=port, socket_timeout=2) as client:
        stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


async def _issue(client: TestClient[Any, Any], subject: str) -> str:
    resp = await client.post("/v1/token", headers=bearer(make_jwt(subject)))
    assert resp.status == 200, await resp.text()
    token: str = (await resp.json())["tokens"][0]["token"]
    return token


async def _revoke(client: TestClient[Any, Any], token: str) -> Any:
    return await client.post("/v1/admin/revoke", json={"token": token}, headers=admin_headers())


async def test_state_returns_once_the_replica_has_the_jobs(
    master: RedisServer, replica: RedisServer
) -> None:
    client = aioredis.Redis.from_url(master.url)
    state = RedisState(client, "me", min_replicas=1, replica_timeout_ms=1000)
    try:
        now = int(time.time() * 1000)
        assert await state.enqueue([("t1", "i"), ("t2", "i")], now) == 2
        assert await state.enqueue([("t3", "i")], now, not_before_ms=now + 60_000) == 1
        # WAIT returned: the replica applied both writes already, no polling needed.
        assert _queued(replica.port) == 3
    finally:
        await client.aclose()


async def test_state_refuses_when_the_replica_acknowledges_nothing(
    master: RedisServer, replica: RedisServer
) -> None:
    client = aioredis.Redis.from_url(master.url)
    state = RedisState(client, "me", min_replicas=1, replica_timeout_ms=TIMEOUT_MS)
    try:
        await state.enqueue([("warm", "i")], int(time.time() * 1000))  # the group exists
        with frozen(replica), pytest.raises(RevocationNotReplicated) as caught:
            await state.enqueue([("t1", "i")], int(time.time() * 1000))
        assert caught.value.extra == {"replicas": 0, "required": 1}
        assert caught.value.headers["Retry-After"] == "2"
        # Not lost: the job is queued on the master, and reaches the replica once it thaws.
        assert _queued(master.port) == 2
        await eventually(lambda: _queued(replica.port) == 2, what="the replica catches up")
    finally:
        await client.aclose()


async def test_default_sends_no_wait(master: RedisServer, replica: RedisServer) -> None:
    client = aioredis.Redis.from_url(master.url)
    try:
        with frozen(replica):
            await RedisState(client, "me").enqueue([("t1", "i")], int(time.time() * 1000))
        assert _queued(master.port) == 1
        assert _waits(master.port) == 0
    finally:
        await client.aclose()


async def test_revoke_answers_202_once_replicated(
    emulator: EmulatorHandle, make_gateway: MakeGateway, master: RedisServer, replica: RedisServer
) -> None:
    gateway = await make_gateway(
        emulator, redis_url=master.url, revocation_min_replicas=1, revocation_replica_timeout=1000
    )
    token = await _issue(gateway, "bob")
    resp = await _revoke(gateway, token)
    assert resp.status == 202, await resp.text()
    assert _waits(master.port) == 1
    await eventually(lambda: emulator.state.is_revoked(token), what="revoked upstream")


async def test_revoke_answers_503_when_the_replica_is_frozen(
    emulator: EmulatorHandle, make_gateway: MakeGateway, master: RedisServer, replica: RedisServer
) -> None:
    # Long enough for a loaded machine's replica to acknowledge the retry (the 503 waits it).
    gateway = await make_gateway(
        emulator, redis_url=master.url, revocation_min_replicas=1, revocation_replica_timeout=1000
    )
    token = await _issue(gateway, "bob")
    with frozen(replica):
        refused = await _revoke(gateway, token)
        assert refused.status == 503, await refused.text()
        assert refused.content_type == "application/problem+json"
        assert refused.headers["Retry-After"] == "2"
        body = await refused.json()
        assert body["code"] == "revocation_not_replicated"
        assert (body["replicas"], body["required"]) == (0, 1)
    # The jobs are on the master, so the token already left every cache: it is not served
    # again while the admin is told to retry.
    assert await _issue(gateway, "bob") != token
    # The refused revocation's job stayed queued: the worker carries it out.
    await eventually(lambda: emulator.state.is_revoked(token), what="revoked upstream")
    # The admin's retry is accepted, and the token is not revoked upstream a second time.
    # Thawed, the replica acknowledges everything again (as the master counts it).
    await eventually(lambda: _acknowledged(master.port), what="the replica caught up")
    retried = await _revoke(gateway, token)
    assert retried.status == 202, await retried.text()
    await eventually(lambda: _queued(master.port) == 0, what="both jobs done")
    assert emulator.state.revoke_calls[token] == 1


async def test_revoke_answers_503_without_any_replica(
    emulator: EmulatorHandle, make_gateway: MakeGateway, master: RedisServer
) -> None:
    gateway = await make_gateway(
        emulator,
        redis_url=master.url,
        revocation_min_replicas=1,
        revocation_replica_timeout=TIMEOUT_MS,
    )
    token = await _issue(gateway, "bob")
    refused = await _revoke(gateway, token)
    assert refused.status == 503, await refused.text()
    assert (await refused.json())["code"] == "revocation_not_replicated"


async def test_cluster_waits_on_the_node_owning_the_stream(
    replicated_cluster: RedisCluster,
) -> None:
    client = await open_redis(replicated_cluster.url, cluster=True)
    owner = replicated_cluster.master_of(key_slot(STREAM.encode()))
    replica_port = replicated_cluster.replica_of(owner)
    # Keyless commands go to the default node: make it one that does not own the stream, so
    # a WAIT sent there (not on the stream's node) would count the wrong replica.
    cluster_client = cast(aioredis.RedisCluster, client)
    (other, *_) = (node for node in cluster_client.get_primaries() if node.port != owner)
    cluster_client.set_default_node(other)
    state = RedisState(client, "me", min_replicas=1, replica_timeout_ms=1000)
    try:
        now = int(time.time() * 1000)
        assert await state.enqueue([("t1", "i")], now) == 1
        assert await state.enqueue([("t2", "i")], now, not_before_ms=now + 60_000) == 1
        # WAIT returned: the replica of the stream's master holds both jobs already.
        assert _queued(replica_port, cluster=True) == 2
        assert _waits(owner) == 2
        replica = replicated_cluster.processes[replica_port]
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            quick = RedisState(client, "me", min_replicas=1, replica_timeout_ms=TIMEOUT_MS)
            with pytest.raises(RevocationNotReplicated):
                await quick.enqueue([("t3", "i")], now)
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        assert _queued(owner, cluster=True) == 3
    finally:
        await client.aclose()


async def test_a_stream_slot_no_master_serves_is_a_503_never_a_500(
    emulator: EmulatorHandle, make_gateway: MakeGateway, replicated_cluster: RedisCluster
) -> None:
    # Between a master's failure and its replica's takeover the stream's slot has no node:
    # routing WAIT there must answer as the store being out, not raise a bare cluster error.
    replicated_cluster.require_full_coverage(False)
    gateway = await make_gateway(
        emulator,
        redis_url=replicated_cluster.url,
        redis_cluster=True,
        revocation_min_replicas=1,
        revocation_replica_timeout=1000,
    )
    token = await _issue(gateway, "bob")
    accepted = await _revoke(gateway, token)
    assert accepted.status == 202, await accepted.text()
    replicated_cluster.unassign(key_slot(STREAM.encode()))
    # The node refuses the first attempt and the client drops its slot map; the next ones
    # fail to load a full one (redis-py requires full coverage) before WAIT is routed.
    for _attempt in range(3):
        refused = await _revoke(gateway, token)
        assert refused.status == 503, await refused.text()
        assert (await refused.json())["code"] == "store_unavailable"
