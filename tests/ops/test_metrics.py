"""/metrics over a real socket: the named series move as requests are made."""

from __future__ import annotations

import asyncio

from authserver import appkeys
from authserver.web.openapi import openapi_document
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.ops.helpers import samples, scrape, value

TOKEN = {"route": "/v1/token", "method": "POST"}


async def test_series_move_with_requests(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    before = await scrape(client)
    assert value(before, "authserver_http_requests_total", status="200", **TOKEN) == 0
    assert value(before, "authserver_circuit_state") == 0
    assert value(before, "authserver_policy_last_reload_success") == 1

    jwt = make_jwt("alice", groups=["ops"], tenant="t1")
    for _ in range(3):
        resp = await client.post("/v1/token", headers=bearer(jwt))
        assert resp.status == 200
    resp = await client.post("/v1/token", headers=bearer("not-a-jwt"))
    assert resp.status == 401

    after = await scrape(client)
    assert value(after, "authserver_http_requests_total", status="200", **TOKEN) == 3
    assert value(after, "authserver_http_requests_total", status="401", **TOKEN) == 1
    assert value(after, "authserver_http_request_duration_seconds_count", route="/v1/token") == 4
    assert value(after, "authserver_http_request_duration_seconds_sum", route="/v1/token") > 0
    # Two tokens (R and W) minted once; the repeats are served by a cache layer in front.
    assert value(after, "authserver_cache_lookups_total", layer="store", result="miss") == 2
    assert value(after, "authserver_tokens_minted_total") == 2
    assert value(after, "authserver_upstream_calls_total", action="ApplyToken", code="ok") == 2
    assert value(after, "authserver_quota_acquired_total", action="ApplyToken") == 2
    assert value(after, "authserver_quota_mode", mode="local") == 1
    assert value(after, "authserver_revocation_queue_depth") == 0
    # The scrape before this one was counted too.
    assert (
        value(after, "authserver_http_requests_total", route="/metrics", method="GET", status="200")
        == 1
    )


async def test_route_label_is_the_template_not_the_path(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    for subject in ("bob", "carol", "dave"):
        await client.get(f"/v1/admin/subjects/{subject}/tokens")
    for path in ("/nope", "/nope/2", "/v2/token"):
        assert (await client.get(path)).status == 404
    text = await scrape(client)
    routes = {
        dict(labels)["route"]
        for (name, labels) in samples(text)
        if name == "authserver_http_requests_total"
    }
    assert routes == {"/v1/admin/subjects/{subject}/tokens", "<unmatched>"}
    unmatched = value(
        text, "authserver_http_requests_total", route="<unmatched>", method="GET", status="404"
    )
    assert unmatched == 3


async def test_policy_version_is_exposed(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    assert client.app is not None
    current = client.app[appkeys.POLICY].current.version_id
    text = await scrape(client)
    assert value(text, "authserver_policy_info", version=current) == 1


async def test_upstream_failures_and_circuit_are_counted(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # Nothing listens on the endpoint: every ApplyToken fails at connect.
    await emulator.runner.cleanup()
    client = await make_gateway(emulator, request_deadline=0.5)
    for _ in range(2):
        resp = await client.post("/v1/token", headers=bearer(make_jwt("bob")))
        assert resp.status == 503
    text = await scrape(client)
    failed = sum(
        v
        for (name, labels), v in samples(text).items()
        if name == "authserver_upstream_calls_total"
        and dict(labels)["action"] == "ApplyToken"
        and dict(labels)["code"] != "ok"
    )
    assert failed >= 2
    assert value(text, "authserver_http_requests_total", status="503", **TOKEN) == 2


async def test_metrics_is_described_and_needs_no_credentials(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    assert "/metrics" in openapi_document()["paths"]
    client = await make_gateway(emulator)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert "X-Request-Id" in resp.headers


async def test_each_app_has_its_own_registry(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    one = await make_gateway(emulator)
    two = await make_gateway(emulator)
    await one.post("/v1/token", headers=bearer(make_jwt("bob")))
    assert value(await scrape(two), "authserver_http_requests_total", status="200", **TOKEN) == 0
    assert value(await scrape(one), "authserver_http_requests_total", status="200", **TOKEN) == 1


async def test_the_jwt_layer_counts_remembered_and_verified_tokens(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    lookups = "authserver_cache_lookups_total"
    jwt = make_jwt("carol")
    # Each body a different request, so no answer layer in front spares the verifier.
    for ttl in (600, 601, 602):
        resp = await client.post("/v1/token", headers=bearer(jwt), json={"ttlSeconds": ttl})
        assert resp.status == 200
    assert (await client.post("/v1/token", headers=bearer("not-a-jwt"))).status == 401

    text = await scrape(client)
    assert value(text, lookups, layer="jwt", result="miss") == 2  # carol's first, the bad one
    assert value(text, lookups, layer="jwt", result="hit") == 2


async def test_cache_layers_in_front_of_redis(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_url: str
) -> None:
    one = await make_gateway(emulator, redis_url=redis_url)
    two = await make_gateway(emulator, redis_url=redis_url)
    jwt = make_jwt("bob")
    assert (await one.post("/v1/token", headers=bearer(jwt))).status == 200
    # The same grant asked differently: not the same finished answer, but the same tokens.
    asked = {"actions": ["R", "W"]}
    assert (await one.post("/v1/token", headers=bearer(jwt), json=asked)).status == 200
    # Another process finds them in Redis, then in its own L1.
    assert (await two.post("/v1/token", headers=bearer(jwt))).status == 200
    assert (await two.post("/v1/token", headers=bearer(jwt), json=asked)).status == 200

    first, second = await scrape(one), await scrape(two)
    lookups = "authserver_cache_lookups_total"
    assert value(first, lookups, layer="store", result="miss") == 2
    assert value(first, lookups, layer="l1", result="hit") == 2
    assert value(second, lookups, layer="store", result="hit") == 2
    assert value(second, lookups, layer="l1", result="hit") == 2
    assert value(second, "authserver_tokens_minted_total") == 0


async def test_refusals_by_limit_and_the_answer_cache_bytes_are_exposed(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, mint_budget=1.0, mint_budget_burst=1)
    jwt = make_jwt("shape-shifter")
    assert (await client.post("/v1/token", headers=bearer(jwt))).status == 200
    resp = await client.post("/v1/token", headers=bearer(jwt), json={"ttlSeconds": 600})
    assert resp.status == 429
    text = await scrape(client)
    assert value(text, "authserver_rate_limited_total", limit="mint") == 1
    held = client.server.app[appkeys.ISSUER].answers.bytes
    assert value(text, "authserver_answer_cache_bytes") == held > 0


async def test_event_loop_tasks_counts_the_tasks_alive_on_the_loop(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    before = value(await scrape(client), "authserver_event_loop_tasks")
    assert before >= 1  # at least the task answering this scrape
    # The test client's server runs on this loop: tasks parked here are the gateway's to see.
    release = asyncio.Event()
    parked = [asyncio.create_task(release.wait()) for _ in range(5)]
    during = value(await scrape(client), "authserver_event_loop_tasks")
    release.set()
    await asyncio.gather(*parked)
    after = value(await scrape(client), "authserver_event_loop_tasks")
    assert during >= before + 5
    assert after <= during - 5
