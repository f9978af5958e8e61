"""Overload: limits per subject, per client IP and the mint budget answer 429 with Retry-After."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from authserver import appkeys
from authserver.clock import ManualClock
from authserver.ratelimit import Limit, LocalBuckets, RateLimiter, address
from authserver.settings import SettingsError, load_settings, parse_networks
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import BOUND_POLICY, EXAMPLE_POLICY, MakeGateway, bearer, make_jwt
from tests.fixtures.redis import free_port


def apply_calls(emulator: EmulatorHandle) -> int:
    """ApplyToken calls the emulator received."""
    return int(emulator.state.stats()["calls"].get("ApplyToken", 0))


async def post(client: TestClient[Any, Any], jwt: str, **kwargs: Any) -> Any:
    """POST /v1/token with this JWT; the response, body read."""
    resp = await client.post("/v1/token", headers={**bearer(jwt), **kwargs.pop("headers", {})},
                             **kwargs)  # fmt: skip
    await resp.read()
    return resp


async def assert_limited(resp: Any, scope: str) -> None:
    """A 429 rate_limited problem naming the limit, with a whole-second Retry-After."""
    assert resp.status == 429, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == "rate_limited"
    assert body["limit"] == scope
    assert int(resp.headers["Retry-After"]) >= 1


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def manual_emulator(make_emulator: MakeEmulator, clock: ManualClock) -> EmulatorHandle:
    return await make_emulator(clock=clock)


async def test_a_retry_loop_is_answered_and_only_new_work_meets_the_subject_limit(
    manual_emulator: EmulatorHandle, make_gateway: MakeGateway, clock: ManualClock
) -> None:
    client = await make_gateway(
        manual_emulator, clock=clock, rate_limit_subject=2.0, rate_limit_subject_burst=5
    )
    looping = make_jwt("looper", now=clock.time())
    # A device in a retry loop costs a lookup a request: answered, never refused.
    assert [(await post(client, looping)).status for _ in range(50)] == [200] * 50
    assert apply_calls(manual_emulator) == 2

    # Each of these is a request of its own that needs working out (a decision, the
    # store), though every one comes down to the same token: the subject limit counts them.
    def wider(n: int) -> dict[str, Any]:
        return {"json": {"topics": ["devices/looper/#", f"devices/looper/x{n}"]}}

    statuses = [(await post(client, looping, **wider(n))).status for n in range(5)]
    assert statuses == [200] * 4 + [429]
    await assert_limited(await post(client, looping, **wider(9)), "subject")
    assert apply_calls(manual_emulator) == 3  # the one RW token they all share
    # Over its limit, the subject is still answered what was worked out before.
    assert (await post(client, looping)).status == 200
    assert (await post(client, looping, **wider(0))).status == 200
    assert (await post(client, make_jwt("bystander", now=clock.time()))).status == 200
    # The bucket refills at the sustained rate: one more request every half second.
    clock.advance(0.5)
    assert (await post(client, looping, **wider(10))).status == 200
    assert (await post(client, looping, **wider(11))).status == 429
    assert client.app[appkeys.RATE_LIMITER].refused["subject"] == 3


async def test_two_hundred_concurrent_first_requests_of_one_subject_all_get_200(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # The default limits: 10 requests a second (burst 20), 10 new tokens a minute (burst 5).
    client = await make_gateway(
        emulator, rate_limit_subject=10.0, rate_limit_subject_burst=20, mint_budget=10.0
    )
    # A phone, a tablet, a car and a watch of one person: one subject, four JWTs.
    jwts = [make_jwt("family", device=n) for n in range(4)]
    answers = await asyncio.gather(*(post(client, jwts[n % 4]) for n in range(200)))
    assert [r.status for r in answers] == [200] * 200
    bodies = {await r.read() for r in answers}
    assert len(bodies) == 1
    assert apply_calls(emulator) == 2  # one R, one W: the single-flight held
    assert client.app[appkeys.RATE_LIMITER].refused == {}


async def test_a_warm_subject_asking_130_times_a_second_is_never_refused(
    manual_emulator: EmulatorHandle, make_gateway: MakeGateway, clock: ManualClock
) -> None:
    client = await make_gateway(
        manual_emulator,
        clock=clock,
        policy_file=BOUND_POLICY,
        rate_limit_subject=10.0,
        rate_limit_subject_burst=20,
        mint_budget=10.0,
    )
    jwts = [make_jwt("busy", now=clock.time(), device=n) for n in range(3)]
    bodies: list[dict[str, Any]] = [
        {},
        {"data": b'{"clientId": "GID_fleet@@@busy-1"}'},
        {"data": b'{ "clientId":"GID_fleet@@@busy-1" }'},
    ]
    for body in bodies[:2]:  # warm: the tokens minted, the answers kept
        assert (await post(client, jwts[0], **body)).status == 200
    calls = apply_calls(manual_emulator)
    statuses = []
    for n in range(3 * 130):  # three seconds at 130 a second, on the gateway's clock
        statuses.append((await post(client, jwts[n % 3], **bodies[n % 3])).status)
        clock.advance(1 / 130)
    assert statuses == [200] * (3 * 130)
    assert apply_calls(manual_emulator) == calls
    assert client.app[appkeys.RATE_LIMITER].refused == {}


async def test_the_ip_limit_applies_before_the_jwt_is_even_read(
    manual_emulator: EmulatorHandle, make_gateway: MakeGateway, clock: ManualClock
) -> None:
    client = await make_gateway(
        manual_emulator, clock=clock, rate_limit_ip=1.0, rate_limit_ip_burst=3
    )
    statuses = [(await post(client, make_jwt(f"d{i}", now=clock.time()))).status for i in range(3)]
    assert statuses == [200, 200, 200]
    refused = await post(client, "not-a-jwt")
    await assert_limited(refused, "ip")
    await assert_limited(await post(client, make_jwt("d9", now=clock.time())), "ip")
    clock.advance(1.0)
    assert (await post(client, "not-a-jwt")).status == 401


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
    manual_emulator: EmulatorHandle, make_gateway: MakeGateway, clock: ManualClock
) -> None:
    jwt = make_jwt("shared-device", now=clock.time())
    untrusted = await make_gateway(
        manual_emulator, clock=clock, rate_limit_ip=1.0, rate_limit_ip_burst=2
    )
    # Without trusted proxies the header is the client's word: ignored, one bucket for all.
    for n in range(2):
        xff = {"X-Forwarded-For": f"198.51.100.{n}"}
        assert (await post(untrusted, jwt, headers=xff)).status == 200
    await assert_limited(
        await post(untrusted, jwt, headers={"X-Forwarded-For": "198.51.100.9"}), "ip"
    )

    proxied = await make_gateway(
        manual_emulator,
        clock=clock,
        rate_limit_ip=1.0,
        rate_limit_ip_burst=2,
        trusted_proxies=("127.0.0.0/8", "10.0.0.0/8"),
    )
    first = {"X-Forwarded-For": "198.51.100.7, 10.1.2.3"}  # client, then an inner proxy
    assert (await post(proxied, jwt, headers=first)).status == 200
    assert (await post(proxied, jwt, headers=first)).status == 200
    # A forged left part does not give the same client a fresh bucket ...
    forged = {"X-Forwarded-For": "203.0.113.99, 198.51.100.7, 10.1.2.3"}
    await assert_limited(await post(proxied, jwt, headers=forged), "ip")
    # ... while another real client behind the same proxy has its own.
    other = {"X-Forwarded-For": "198.51.100.8"}
    assert (await post(proxied, jwt, headers=other)).status == 200


async def test_one_client_is_one_bucket_however_the_proxies_spell_it(
    manual_emulator: EmulatorHandle, make_gateway: MakeGateway, clock: ManualClock
) -> None:
    proxied = await make_gateway(
        manual_emulator,
        clock=clock,
        rate_limit_ip=1.0,
        rate_limit_ip_burst=3,
        trusted_proxies=("127.0.0.0/8", "10.0.0.0/8"),
    )
    jwt = make_jwt("shared-device", now=clock.time())

    async def forwarded(*lines: str) -> Any:
        headers = CIMultiDict(bearer(jwt))
        for line in lines:  # one header line each, as a proxy that adds a line writes them
            headers.add("X-Forwarded-For", line)
        resp = await proxied.post("/v1/token", headers=headers)
        await resp.read()
        return resp

    # 198.51.100.7 three ways; the last one on a second header line after a forged first.
    assert (await forwarded("198.51.100.7:5678")).status == 200
    assert (await forwarded("[::ffff:198.51.100.7]:443")).status == 200
    assert (await forwarded("203.0.113.5", "0:0:0:0:0:ffff:c633:6407, 10.1.2.3")).status == 200
    await assert_limited(await forwarded("203.0.113.6", "198.51.100.7"), "ip")
    # Another client behind the same proxies has its own bucket.
    assert (await forwarded("198.51.100.8")).status == 200
    # Text that is not an address makes no bucket of its own: it counts as the proxy's.
    for junk in ("not-an-ip", "junk:port", "198.51.100.9, [::1"):
        assert (await forwarded(junk)).status == 200
    await assert_limited(await forwarded("unknown"), "ip")


async def test_an_ipv6_client_is_one_bucket_per_prefix(
    manual_emulator: EmulatorHandle, make_gateway: MakeGateway, clock: ManualClock
) -> None:
    # One customer's /64 is one client: a fresh address in it is no fresh bucket.
    proxied = await make_gateway(
        manual_emulator,
        clock=clock,
        rate_limit_ip=1.0,
        rate_limit_ip_burst=2,
        trusted_proxies=("127.0.0.0/8",),
    )
    jwt = make_jwt("shared-device", now=clock.time())

    def xff(client: str) -> dict[str, str]:
        return {"X-Forwarded-For": client}

    assert (await post(proxied, jwt, headers=xff("2001:db8:1:2::1"))).status == 200
    assert (await post(proxied, jwt, headers=xff("2001:db8:1:2:ffff:ffff:ffff:ffff"))).status == 200
    await assert_limited(await post(proxied, jwt, headers=xff("[2001:db8:1:2:abcd::9]:443")), "ip")
    # The next /64 is another customer, and an IPv4 client (mapped or not) keys by address.
    assert (await post(proxied, jwt, headers=xff("2001:db8:1:3::1"))).status == 200
    assert (await post(proxied, jwt, headers=xff("::ffff:198.51.100.7"))).status == 200
    assert (await post(proxied, jwt, headers=xff("198.51.100.7"))).status == 200
    assert (await post(proxied, jwt, headers=xff("198.51.100.8"))).status == 200

    # A /128 setting keys each IPv6 address by itself again.
    per_address = await make_gateway(
        manual_emulator,
        clock=clock,
        rate_limit_ip=1.0,
        rate_limit_ip_burst=1,
        rate_limit_ipv6_prefix=128,
        trusted_proxies=("127.0.0.0/8",),
    )
    assert (await post(per_address, jwt, headers=xff("2001:db8:1:2::1"))).status == 200
    assert (await post(per_address, jwt, headers=xff("2001:db8:1:2::2"))).status == 200
    await assert_limited(await post(per_address, jwt, headers=xff("2001:db8:1:2::1")), "ip")


def test_ip_keys_mask_ipv6_by_the_prefix() -> None:
    limiter = RateLimiter(subject=Limit(0), ip=Limit(1), clock=ManualClock(), ipv6_prefix=48)
    assert limiter.ip_key("2001:db8:1:2::1") == "2001:db8:1::/48"
    assert limiter.ip_key("2001:db8:1:ffff::1") == "2001:db8:1::/48"
    assert limiter.ip_key("2001:db8:2::1") == "2001:db8:2::/48"
    assert limiter.ip_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert limiter.ip_key("203.0.113.9:80") == "203.0.113.9"
    assert limiter.ip_key("unknown") == "unknown"  # not an address: its own key, as before


@pytest.mark.parametrize(
    ("spelled", "normal"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9 ", "203.0.113.9"),
        ("203.0.113.9:5678", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),  # IPv4-mapped IPv6 is the IPv4 address
        ("[::ffff:203.0.113.9]:443", "203.0.113.9"),
        ("::ffff:cb00:7109", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),  # one value per address
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:80", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),  # the zone is the proxy's, not the client's
        ("::1", "::1"),
    ],
)
def test_addresses_are_normalised(spelled: str, normal: str) -> None:
    assert str(address(spelled)) == normal


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "garbage",
        "unknown",
        "203.0.113.9:",
        "203.0.113.9:port",
        "203.0.113.9:99999",
        "203.0.113.9:\u0665",  # a non-ASCII digit is not a port
        "203.0.113",
        "203.0.113.09",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "[2001:db8::1]:",
        "[203.0.113.9]:80",
        "2001:db8::1:80:x",
        "1" * 65,
        "_hidden",
    ],
)
def test_what_is_not_an_address_is_none(junk: str) -> None:
    assert address(junk) is None


BEHIND_PROXIES = RateLimiter(
    subject=Limit(0),
    ip=Limit(1, 1),
    clock=ManualClock(),
    trusted_proxies=parse_networks(["10.0.0.0/8", "2001:db8::/32"]),
)


@pytest.mark.parametrize(
    ("peer", "lines", "client"),
    [
        ("10.0.0.1", ["203.0.113.9, 10.0.0.5"], "203.0.113.9"),
        ("10.0.0.1", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),  # the left part proves nothing
        # Every header line counts, in order: a proxy may add a line rather than append.
        ("10.0.0.1", ["203.0.113.66", "203.0.113.9"], "203.0.113.9"),
        ("10.0.0.1", ["203.0.113.9", "10.0.0.5"], "203.0.113.9"),
        ("10.0.0.1", ["203.0.113.66, 203.0.113.9", "10.0.0.7, 10.0.0.5"], "203.0.113.9"),
        # Spellings of one address are one client.
        ("10.0.0.1", ["203.0.113.9:5678"], "203.0.113.9"),
        ("10.0.0.1", ["[::ffff:203.0.113.9]:443"], "203.0.113.9"),
        ("10.0.0.1", ["2a00:0:0:0::1, 2001:db8::2"], "2a00::1"),
        ("::ffff:10.0.0.1", ["203.0.113.9"], "203.0.113.9"),  # a dual-stack socket's peer
        ("10.0.0.1", ["[10.0.0.5]:80"], "10.0.0.1"),
        # Text that is not an address ends the walk at the proxy that relayed it.
        ("10.0.0.1", ["garbage"], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.66, garbage, 10.0.0.5"], "10.0.0.5"),
        ("10.0.0.1", ["203.0.113.66, unknown"], "10.0.0.1"),
        ("10.0.0.1", [" , "], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.9,,"], "203.0.113.9"),
        # Only proxies: the one nearest to the client.
        ("2001:db8::1", ["2001:db8::2, 2001:db8::3"], "2001:db8::2"),
        ("10.0.0.1", [], "10.0.0.1"),
        # An untrusted peer's header is its own word: ignored.
        ("192.0.2.1", ["203.0.113.9"], "192.0.2.1"),
        ("::ffff:192.0.2.1", [], "192.0.2.1"),
        (None, ["203.0.113.9"], "unknown"),
    ],
)
def test_client_ip_takes_the_rightmost_untrusted_address(
    peer: str | None, lines: list[str], client: str
) -> None:
    assert BEHIND_PROXIES.client_ip(peer, lines) == client


async def test_a_subject_asking_new_token_shapes_is_refused_past_its_mint_budget(
    manual_emulator: EmulatorHandle, make_gateway: MakeGateway, clock: ManualClock
) -> None:
    client = await make_gateway(manual_emulator, clock=clock, mint_budget=10.0, mint_budget_burst=3)
    jwt = make_jwt("shape-shifter", now=clock.time())
    cached = {"topics": ["devices/shape-shifter/0"]}
    # A new topic subset on every request defeats the caches: every request mints.
    assert (await post(client, jwt, json=cached)).status == 200
    for n in (1, 2):
        assert (
            await post(client, jwt, json={"topics": [f"devices/shape-shifter/{n}"]})
        ).status == 200
    calls = apply_calls(manual_emulator)
    refused = await post(client, jwt, json={"topics": ["devices/shape-shifter/3"]})
    await assert_limited(refused, "mint")
    assert 1 <= int(refused.headers["Retry-After"]) <= 6  # one more every 6 s at 10 a minute
    assert apply_calls(manual_emulator) == calls

    # What needs no new token is not limited by it: the answer cache ...
    for _ in range(20):
        assert (await post(client, jwt, json=cached)).status == 200
    # ... nor the store (another spelling of the same grant, not yet an answer of its own).
    same_grant = {**cached, "actions": ["W", "R"]}
    assert (await post(client, jwt, json=same_grant)).status == 200
    assert apply_calls(manual_emulator) == calls
    # Another subject has its own budget.
    assert (await post(client, make_jwt("bystander", now=clock.time()))).status == 200
    # The budget refills at its rate: one more new token six seconds on.
    clock.advance(6.0)
    assert (await post(client, jwt, json={"topics": ["devices/shape-shifter/3"]})).status == 200
    await assert_limited(
        await post(client, jwt, json={"topics": ["devices/shape-shifter/4"]}), "mint"
    )
    assert client.app[appkeys.RATE_LIMITER].refused["mint"] == 2


async def test_the_mint_budget_is_shared_by_gateways_through_redis(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_url: str
) -> None:
    # One new token a minute does not refill during the test; the burst is 3.
    limits = {"mint_budget": 1.0, "mint_budget_burst": 3}
    one = await make_gateway(emulator, redis_url=redis_url, **limits)
    two = await make_gateway(emulator, redis_url=redis_url, **limits)
    jwt = make_jwt("shape-shifter")
    # Asking for another lifetime each time defeats the cache: every request mints.
    for ttl in (600, 601, 602):
        assert (await post(one, jwt, json={"ttlSeconds": ttl})).status == 200
    calls = apply_calls(emulator)
    # The second gateway has never minted for this subject, but the shared budget is spent.
    await assert_limited(await post(two, jwt, json={"ttlSeconds": 603}), "mint")
    assert apply_calls(emulator) == calls
    # A request whose tokens are in the shared store mints nothing and is not refused.
    assert (await post(two, jwt, json={"ttlSeconds": 600})).status == 200
    assert (await post(two, make_jwt("someone-else"))).status == 200
    assert two.app[appkeys.RATE_LIMITER].mode == "shared"


async def test_a_redis_failure_falls_back_to_local_limits() -> None:
    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        limiter = RateLimiter(
            subject=Limit(0), ip=Limit(0), mint=Limit(1, 2), clock=ManualClock(), redis=dead
        )
        limiter.asking("dev", None)
        await limiter.check_shared()  # Redis is down: no 429, no 500
        assert limiter.mode == "local-fallback"
        assert limiter.redis_errors == 1
        limiter.asking("dev", None)  # the next request
        await limiter.check_shared()  # does not try Redis again at once
        assert limiter.redis_errors == 1
        limiter.asking("dev", None)
        with pytest.raises(Exception, match="too many requests needing a new token"):
            await limiter.check_shared()  # the budget is kept in this process meanwhile
    finally:
        await dead.aclose()


def test_local_buckets_stay_bounded() -> None:
    clock = ManualClock()
    buckets = LocalBuckets(Limit(1.0, 1), clock, max_keys=100)
    for n in range(1000):
        assert buckets.take(f"k{n}") == 0.0
    assert len(buckets) <= 100
    assert buckets.take("k999") > 0  # recent keys are kept
    clock.advance(2)
    buckets.take("new")
    assert buckets.take("k999") == 0.0


def test_settings_read_the_limits_and_refuse_bad_proxies(tmp_path: Any) -> None:
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "id",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "secret",
        "AUTHSERVER_MQTT_INSTANCE_ID": "post-cn-x",
        "AUTHSERVER_POLICY_FILE": str(EXAMPLE_POLICY),
        "AUTHSERVER_JWT_SECRET": "s" * 32,
        "AUTHSERVER_JWT_ISSUER": "https://issuer.example",
    }
    defaults = load_settings(env)
    assert (defaults.rate_limit_subject, defaults.rate_limit_subject_burst) == (10.0, 20)
    assert defaults.rate_limit_ip == 0.0
    assert (defaults.mint_budget, defaults.mint_budget_burst) == (10.0, 5)
    tuned = load_settings(
        {
            **env,
            "AUTHSERVER_RATE_LIMIT_SUBJECT": "0",
            "AUTHSERVER_RATE_LIMIT_IP": "50",
            "AUTHSERVER_RATE_LIMIT_IP_BURST": "80",
            "AUTHSERVER_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8",
            "AUTHSERVER_MINT_BUDGET": "30",
            "AUTHSERVER_MINT_BUDGET_BURST": "2",
        }
    )
    assert (tuned.mint_budget, tuned.mint_budget_burst) == (30, 2)
    assert dataclasses.astuple(Limit(tuned.rate_limit_ip, tuned.rate_limit_ip_burst)) == (50, 80)
    assert tuned.rate_limit_subject == 0
    assert parse_networks(tuned.trusted_proxies)[0] == ipaddress.ip_network("10.0.0.0/8")
    with pytest.raises(SettingsError) as caught:
        load_settings({**env, "AUTHSERVER_TRUSTED_PROXIES": "10.0.0.0/8,not-a-cidr",
                       "AUTHSERVER_RATE_LIMIT_SUBJECT": "-1",
                       "AUTHSERVER_MINT_BUDGET_BURST": "0"})  # fmt: skip
    text = str(caught.value)
    assert "MINT_BUDGET_BURST" in text
    assert "TRUSTED_PROXIES" in text
    assert "RATE_LIMIT_SUBJECT" in text


@pytest.mark.parametrize("prefix", ["31", "129", "64.5", "x"])
def test_the_ipv6_prefix_is_a_length_from_32_to_128(prefix: str) -> None:
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "id",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "secret",
        "AUTHSERVER_MQTT_INSTANCE_ID": "post-cn-x",
        "AUTHSERVER_POLICY_FILE": str(EXAMPLE_POLICY),
        "AUTHSERVER_JWT_SECRET": "s" * 32,
        "AUTHSERVER_JWT_ISSUER": "https://issuer.example",
    }
    assert load_settings(env).rate_limit_ipv6_prefix == 64
    assert (
        load_settings({**env, "AUTHSERVER_RATE_LIMIT_IPV6_PREFIX": "56"}).rate_limit_ipv6_prefix
        == 56
    )
    with pytest.raises(SettingsError, match="RATE_LIMIT_IPV6_PREFIX"):
        load_settings({**env, "AUTHSERVER_RATE_LIMIT_IPV6_PREFIX": prefix})
