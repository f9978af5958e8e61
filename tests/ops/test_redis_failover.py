"""Redis Cluster failover under load: masters SIGKILLed, replicas promoted, nothing lost.

Two gateways share a cluster of three masters with one replica each (`replicated_cluster`).
Devices keep fetching tokens and admins keep revoking while the test kills, first, the master
of the revocation stream's slot at the worst moment (a RevokeToken carried out upstream, its
acknowledgement not yet written), then the master holding a set of devices' token keys (and
the invalidation bus's channel). Each takeover is held back (`hold_failover`) until the test
has looked at the outage, then released, so what the test sees does not depend on how fast
the machine is. In the end every accepted revocation was carried to the emulator exactly
once, counted per token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from authserver import appkeys, background
from authserver.tokens.bus import CHANNEL
from authserver.tokens.model import subject_tag
from authserver.tokens.revocation import REVOKED, STREAM
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import MakeEmulator
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.fixtures.redis_cluster import RedisCluster
from tests.helpers import eventually

Client = TestClient[Any, Any]
# Pending revocations whose worker went quiet are handed over this soon (seconds): short,
# so the test does not wait 30 s; the workers' upstream calls get half of it, long beside
# one call on loopback even on a loaded machine.
CLAIM_IDLE = 5.0
# Failover of a SIGKILLed master: node timeout, election, every node agreeing. Generous.
TAKEOVER = 60.0


class RevokeGate:
    """Holds back the answers of RevokeToken calls the emulator has already carried out."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.held = 0

    def close(self) -> None:
        """From now on, answers of RevokeToken wait for `release`."""
        self._open.clear()

    def release(self) -> None:
        """Let every held answer go."""
        self._open.set()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Answer, then hold the answer of a RevokeToken while the gate is closed."""
        response = await handler(request)
        if not self._open.is_set():
            form = dict(parse_qsl((await request.read()).decode()))
            if form.get("Action") == "RevokeToken":
                self.held += 1
                await self._open.wait()
        return response


@dataclass
class DeviceLoad:
    """Devices asking both gateways for their tokens in a loop; every answer is kept."""

    gateways: list[Client]
    subjects: list[str]
    passwords: dict[str, str]
    answers: list[tuple[str, int, str, Any]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run in the background until `stop`."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """End the loop (again: a no-op)."""
        if self._task is None:
            return
        task, self._task = self._task, None
        await background.stop([task])

    async def _run(self) -> None:
        while True:
            for subject in self.subjects:
                for gateway in self.gateways:
                    resp = await gateway.post("/v1/token", headers=bearer(make_jwt(subject)))
                    self.answers.append(
                        (
                            subject,
                            resp.status,
                            resp.content_type,
                            await resp.json(content_type=None),
                        )
                    )
            await asyncio.sleep(0.02)  # pacing of the load, not a wait for anything

    def check(self) -> Iterator[str]:
        """Every answer was the device's own cached password, or a precise 503 problem."""
        for subject, status, content_type, body in self.answers:
            if status == 200:
                if body["password"] != self.passwords[subject]:
                    yield f"{subject} got another password"
            elif status != 503 or content_type != "application/problem+json" or "code" not in body:
                yield f"{subject}: {status} {content_type} {body}"


def subjects_on(cluster: RedisCluster, master: int, prefix: str, count: int) -> list[str]:
    """`count` subjects whose token keys (one hash tag per subject) live on `master`."""
    found: list[str] = []
    index = 0
    while len(found) < count:
        subject = f"{prefix}-{index}"
        if cluster.master_of(key_slot(subject_tag(subject).encode())) == master:
            found.append(subject)
        index += 1
    return found


async def fetch(gateway: Client, subject: str) -> dict[str, Any]:
    """POST /v1/token for `subject`, which must succeed."""
    resp = await gateway.post("/v1/token", headers=bearer(make_jwt(subject)))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json(content_type=None)
    return body


async def revoke(gateway: Client, subject: str) -> tuple[int, dict[str, Any]]:
    """An admin's revocation of every token of `subject` (no block: devices may come back)."""
    resp = await gateway.post(
        "/v1/admin/revoke",
        json={"subject": subject, "blockIssuedBefore": False},
        headers=admin_headers(),
    )
    body: dict[str, Any] = await resp.json(content_type=None)
    if resp.status != 202:
        assert resp.status == 503, body
        assert resp.content_type == "application/problem+json"
        assert body["code"] == "store_unavailable", body
    return resp.status, body


async def revoke_until_accepted(gateway: Client, subject: str) -> None:
    """Retry a revocation, as an operator would, until the gateway accepts it."""

    async def accepted() -> bool:
        status, _body = await revoke(gateway, subject)
        return status == 202

    await eventually(accepted, within=TAKEOVER, what=f"revocation of {subject} accepted")


async def off_thread(check: Callable[[], bool]) -> bool:
    """A blocking look at the cluster, off the event loop the gateways run on.

    A node that is going away, or a view that is changing, is "not yet".
    """
    try:
        return await asyncio.to_thread(check)
    except (OSError, LookupError, KeyError, ValueError):
        return False


async def answered_from_cache(gateways: list[Client], subjects: list[str]) -> bool:
    """Whether every gateway's bus is in sync and serves `subjects` without its store."""

    def store_reads() -> list[tuple[int, int]]:
        services = [g.server.app[appkeys.TOKENS] for g in gateways]
        return [(service.hits["store"], service.misses) for service in services]

    if not all(g.server.app[appkeys.BUS].synced for g in gateways):
        return False
    before = store_reads()
    for subject in subjects:
        for gateway in gateways:
            await fetch(gateway, subject)
    return store_reads() == before


async def test_failover_of_the_stream_and_token_masters_loses_and_repeats_nothing(
    replicated_cluster: RedisCluster, make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    cluster = replicated_cluster
    gate = RevokeGate()
    emulator = await make_emulator(middlewares=[gate.middleware])
    gateways = [
        await make_gateway(
            emulator,
            redis_url=cluster.url,
            redis_cluster=True,
            revocation_claim_idle=CLAIM_IDLE,
        )
        for _ in range(2)
    ]
    one, two = gateways
    stream_slot = key_slot(STREAM.encode())
    stream_master = cluster.master_of(stream_slot)
    # The token master also carries the invalidation bus: its loss cuts every subscription.
    token_master = cluster.master_of(key_slot(CHANNEL.encode()))
    assert token_master != stream_master
    (third_master,) = {n.port for n in cluster.nodes() if n.serving} - {
        stream_master,
        token_master,
    }
    held = subjects_on(cluster, token_master, "held", 6)  # cached by both gateways
    late = subjects_on(cluster, token_master, "late", 2)  # first asking during the outage
    doomed = subjects_on(cluster, third_master, "doomed", 6)  # revoked along the way

    passwords: dict[str, str] = {}
    tokens: dict[str, list[str]] = {}
    for subject in held + doomed:
        for gateway in gateways:
            body = await fetch(gateway, subject)
            assert passwords.setdefault(subject, body["password"]) == body["password"]
            tokens[subject] = [t["token"] for t in body["tokens"]]
    accepted: list[str] = []  # every subject whose revocation a gateway accepted (202)
    load = DeviceLoad(gateways, held, passwords)
    load.start()
    try:
        # 1. The stream's master dies after a RevokeToken was carried out, before its XACK.
        gate.close()
        status, _body = await revoke(one, doomed[0])
        assert status == 202
        accepted.append(doomed[0])
        await eventually(lambda: gate.held >= 1, what="a RevokeToken carried out, answer held")
        stream_replica = cluster.replica_of(stream_master)
        await eventually(lambda: off_thread(lambda: cluster.replica_caught_up(stream_master)))
        cluster.hold_failover(stream_replica)
        cluster.kill(stream_master)
        gate.release()  # the worker learns of its success now, and cannot acknowledge it
        # No master for the stream: a revocation cannot be queued and says so precisely.
        status, _body = await revoke(two, doomed[1])
        assert status == 503
        cluster.hold_failover(stream_replica, held=False)
        await eventually(
            lambda: off_thread(lambda: cluster.promoted(stream_slot, stream_master)),
            within=TAKEOVER,
        )
        await revoke_until_accepted(two, doomed[1])  # the gateway moved to the new master itself
        accepted.append(doomed[1])

        # 2. The token master dies while revocations drain and devices fetch their tokens.
        for index, subject in enumerate(doomed[2:]):
            status, _body = await revoke(gateways[index % 2], subject)
            assert status == 202
            accepted.append(subject)
        # The first outage cut every gateway's bus (redis-py closes all of a cluster client's
        # connections on CLUSTERDOWN), and its resync flushed their caches: wait until the buses
        # are in sync again and a whole round of the devices' requests is answered from cache.
        await eventually(lambda: answered_from_cache(gateways, held), within=TAKEOVER)
        token_replica = cluster.replica_of(token_master)
        await eventually(lambda: off_thread(lambda: cluster.replica_caught_up(token_master)))
        cluster.hold_failover(token_replica)
        cluster.kill(token_master)
        # With the takeover held, no node serves these keys (and, as Redis requires full slot
        # coverage by default, no node serves any key): only a cached answer can be given.
        for subject in held:
            for gateway in gateways:
                assert (await fetch(gateway, subject))["password"] == passwords[subject]
        for subject in late:  # what cannot be served is refused precisely
            resp = await one.post("/v1/token", headers=bearer(make_jwt(subject)))
            assert resp.status == 503
            assert resp.content_type == "application/problem+json"
            assert (await resp.json(content_type=None))["code"] == "store_unavailable"
        cluster.hold_failover(token_replica, held=False)
        await eventually(
            lambda: off_thread(lambda: cluster.promoted(key_slot(CHANNEL.encode()), token_master)),
            within=TAKEOVER,
        )

        # 3. Both gateways resume on the new masters without a restart.
        for subject in late:

            async def served(subject: str = subject) -> bool:
                resp = await two.post("/v1/token", headers=bearer(make_jwt(subject)))
                return resp.status == 200

            await eventually(served, within=TAKEOVER, what=f"{subject} served after the takeover")

        async def drained_everywhere() -> bool:
            for gateway in gateways:
                resp = await gateway.get("/v1/admin/revocations", headers=admin_headers())
                if resp.status != 200 or (await resp.json(content_type=None))["depth"] != 0:
                    return False
            return True

        await eventually(drained_everywhere, within=TAKEOVER, what="the revocation queue drained")
        await load.stop()
        assert not list(load.check())
        assert sum(1 for _s, status, _c, _b in load.answers if status == 200) > 0

        # Every accepted revocation reached the upstream exactly once; nothing else was revoked.
        expected = {t: 1 for s in accepted for t in tokens[s]}
        assert dict(emulator.state.revoke_calls) == expected
        # The job whose acknowledgement died with the first master was handed out again, and
        # found revoked already (QueryToken) instead of being revoked twice.
        workers = [g.server.app[appkeys.REVOCATION_WORKER] for g in gateways]
        assert sum(worker.already_revoked for worker in workers) >= 1
    finally:
        await load.stop()


async def test_a_revocation_refused_half_way_and_retried_is_revoked_upstream_once(
    replicated_cluster: RedisCluster, make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    cluster = replicated_cluster
    # The live masters keep serving their slots while one is down: a revocation can then be
    # queued and still fail on the node that holds the revoked-token marks.
    cluster.require_full_coverage(False)
    emulator = await make_emulator()
    gateway = await make_gateway(
        emulator, redis_url=cluster.url, redis_cluster=True, revocation_claim_idle=CLAIM_IDLE
    )
    stream_master = cluster.master_of(key_slot(STREAM.encode()))
    marks_slot = key_slot(REVOKED.encode())
    marks_master = cluster.master_of(marks_slot)
    assert marks_master != stream_master
    (third_master,) = {n.port for n in cluster.nodes() if n.serving} - {
        stream_master,
        marks_master,
    }
    (subject,) = subjects_on(cluster, third_master, "twice", 1)
    tokens = [t["token"] for t in (await fetch(gateway, subject))["tokens"]]
    replica = cluster.replica_of(marks_master)
    await eventually(lambda: off_thread(lambda: cluster.replica_caught_up(marks_master)))
    cluster.hold_failover(replica)
    cluster.kill(marks_master)

    status, _body = await revoke(gateway, subject)
    assert status == 503  # its jobs were queued, the marks could not be written

    async def drained() -> bool:
        resp = await gateway.get("/v1/admin/revocations", headers=admin_headers())
        return resp.status == 200 and (await resp.json(content_type=None))["depth"] == 0

    cluster.hold_failover(replica, held=False)
    await eventually(
        lambda: off_thread(lambda: cluster.promoted(marks_slot, marks_master)), within=TAKEOVER
    )
    # The refused revocation's jobs were queued: they are carried out without a retry. (Not
    # asserted while the marks' master is down: in one clean-clone run under load, redis-py's
    # cluster client failed every command, even those for the live masters, until the
    # takeover; see the note on issue 13.)
    await eventually(drained, within=TAKEOVER, what="the refused revocation's jobs drained")
    assert all(emulator.state.is_revoked(t) for t in tokens)
    await revoke_until_accepted(gateway, subject)  # the admin retries: the jobs come again
    await eventually(drained, within=TAKEOVER, what="the revocation queue drained")
    assert dict(emulator.state.revoke_calls) == dict.fromkeys(tokens, 1)


async def test_a_slot_no_master_serves_is_a_precise_503_never_a_500(
    replicated_cluster: RedisCluster, make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    # What a client meets between a master's failure and its replica's takeover: a slot that
    # no node serves. redis-py then cannot load a full slot map and raises an exception that
    # is no RedisError; it must reach the device and the admin as the store being out.
    cluster = replicated_cluster
    cluster.require_full_coverage(False)  # the other slots keep being served
    emulator = await make_emulator()
    gateway = await make_gateway(emulator, redis_url=cluster.url, redis_cluster=True)
    master = min(n.port for n in cluster.nodes() if n.serving)
    orphan, other = subjects_on(cluster, master, "orphan", 2)
    assert (await fetch(gateway, other))["password"]
    cluster.unassign(key_slot(subject_tag(orphan).encode()))

    resp = await gateway.post("/v1/token", headers=bearer(make_jwt(orphan)))
    assert resp.status == 503
    assert resp.content_type == "application/problem+json"
    assert (await resp.json(content_type=None))["code"] == "store_unavailable"
    status, _body = await revoke(gateway, orphan)
    assert status == 503
    assert (await gateway.get("/readyz")).status == 200  # every other device is still served
