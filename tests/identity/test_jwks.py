"""JWKS over a real socket: load, rotation, rate-limited refresh, one fetch for many, failures."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from jwt.algorithms import RSAAlgorithm

from authserver.errors import InvalidToken, ServiceUnavailable
from authserver.identity import JWTSettings, JWTVerifier
from authserver.identity.jwks import RETRY_FIRST_DELAY
from tests.helpers import eventually
from tests.identity.conftest import JWKSServer, MakeVerifier
from tests.identity.test_verify import CountingVerifier
from tests.identity.tokens import ISSUER, Keys, Minter, public_jwk

ALGS = ("RS256", "ES256", "EdDSA")


def settings(server: JWKSServer, **overrides: object) -> JWTSettings:
    """JWKS settings for the test server."""
    chosen: dict[str, object] = {"issuer": ISSUER, **overrides}
    return JWTSettings(algorithms=ALGS, jwks_url=server.url, **chosen)  # type: ignore[arg-type]


async def test_keys_of_every_family_are_loaded_at_start_and_chosen_by_kid(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(
        public_jwk(keys.rsa, kid="r1", alg="RS256", use="sig"),
        public_jwk(keys.ec, kid="e1"),  # no alg: inferred from the curve
        public_jwk(keys.ed, kid="o1", alg="EdDSA"),
    )
    verifier = await make_verifier(settings(jwks_server))

    assert verifier.ready
    assert jwks_server.requests == 1
    for key, alg, kid in [(keys.rsa, "RS256", "r1"), (keys.ec, "ES256", "e1"),
                          (keys.ed, "EdDSA", "o1")]:  # fmt: skip
        identity = await verifier.verify(minter.sign(key, alg, headers={"kid": kid}))
        assert identity.subject == "dev1"
    assert jwks_server.requests == 1


async def test_keys_for_encryption_symmetric_or_other_algorithms_are_ignored(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(
        public_jwk(keys.rsa, kid="enc", alg="RS256", use="enc"),
        public_jwk(keys.rsa2, kid="other-alg", alg="RS384"),
        public_jwk(keys.ed, kid="sign-only", key_ops=["sign"]),
        {"kty": "oct", "kid": "sym", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
        public_jwk(keys.ec, kid="ok"),
    )
    verifier = await make_verifier(settings(jwks_server))
    jwks = verifier.jwks
    assert jwks is not None
    assert jwks.keys is not None
    assert jwks.keys.kids == {"ok"}

    with pytest.raises(InvalidToken, match="no trusted key"):
        await verifier.verify(minter.sign(keys.rsa, "RS256", headers={"kid": "enc"}))


async def test_a_kid_with_the_wrong_algorithm_is_refused_without_a_refresh(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.ec, kid="e1", alg="ES256"))
    verifier = await make_verifier(settings(jwks_server))
    minter.clock.advance(60)

    with pytest.raises(InvalidToken, match="not for its algorithm"):
        await verifier.verify(minter.sign(keys.rsa, "RS256", headers={"kid": "e1"}))
    assert jwks_server.requests == 1


async def test_a_token_without_kid_uses_the_only_key_for_its_algorithm(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.ec, kid="e1"), public_jwk(keys.ec2, kid="e2"),
                        public_jwk(keys.rsa, kid="r1"))  # fmt: skip
    verifier = await make_verifier(settings(jwks_server))

    assert (await verifier.verify(minter.sign(keys.rsa, "RS256"))).subject == "dev1"
    with pytest.raises(InvalidToken, match="no key id"):
        await verifier.verify(minter.sign(keys.ec, "ES256"))


async def test_rotation_is_picked_up_by_one_refresh_rate_limited_per_interval(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    verifier = await make_verifier(settings(jwks_server))
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"), public_jwk(keys.rsa2, kid="k2"))
    new_key_token = minter.sign(keys.rsa2, "RS256", headers={"kid": "k2"})

    # Within 30 s of the start-up fetch an unknown kid refreshes nothing.
    minter.clock.advance(29)
    with pytest.raises(InvalidToken, match="no trusted key"):
        await verifier.verify(new_key_token)
    assert jwks_server.requests == 1

    minter.clock.advance(2)
    assert (await verifier.verify(new_key_token)).subject == "dev1"
    assert jwks_server.requests == 2

    # Unknown kids, however many, cost no further fetch until the interval has passed again.
    for kid in ("k3", "k4", "../../etc/passwd"):
        with pytest.raises(InvalidToken, match="no trusted key"):
            await verifier.verify(minter.sign(keys.rsa2, "RS256", headers={"kid": kid}))
    assert jwks_server.requests == 2
    minter.clock.advance(30)
    with pytest.raises(InvalidToken, match="no trusted key"):
        await verifier.verify(minter.sign(keys.rsa2, "RS256", headers={"kid": "k5"}))
    assert jwks_server.requests == 3


async def test_concurrent_unknown_kids_share_one_fetch(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    verifier = await make_verifier(settings(jwks_server))
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"), public_jwk(keys.rsa2, kid="k2"))
    minter.clock.advance(31)
    jwks_server.gate = asyncio.Event()
    good = [minter.sign(keys.rsa2, "RS256", headers={"kid": "k2"}, claims={"n": n})
            for n in range(20)]  # fmt: skip
    unknown = [minter.sign(keys.rsa2, "RS256", headers={"kid": f"u{n}"}) for n in range(20)]

    pending = [asyncio.ensure_future(verifier.verify(t)) for t in good + unknown]
    await eventually(lambda: jwks_server.requests == 2)
    for _ in range(50):  # every verification reaches its wait on the fetch in flight
        await asyncio.sleep(0)
    jwks_server.gate.set()
    results = await asyncio.gather(*pending, return_exceptions=True)

    assert jwks_server.requests == 2
    assert all(not isinstance(r, BaseException) for r in results[:20])
    assert all(isinstance(r, InvalidToken) for r in results[20:])


@pytest.mark.parametrize(
    "breakage",
    ["http-500", "not-json", "no-keys-list", "no-usable-key", "nested-json-bomb"],
)
async def test_a_failed_fetch_keeps_the_old_keys(
    jwks_server: JWKSServer,
    make_verifier: MakeVerifier,
    minter: Minter,
    keys: Keys,
    breakage: str,
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    verifier = await make_verifier(settings(jwks_server))
    if breakage == "http-500":
        jwks_server.status = 500
    elif breakage == "not-json":
        jwks_server.raw = b"<html>maintenance</html>"
    elif breakage == "no-keys-list":
        jwks_server.raw = b'{"keys": "none"}'
    elif breakage == "no-usable-key":
        jwks_server.publish(public_jwk(keys.rsa, kid="enc-only", use="enc"))
    else:
        jwks_server.raw = b'{"keys": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    minter.clock.advance(31)

    with pytest.raises(InvalidToken, match="no trusted key"):
        await verifier.verify(minter.sign(keys.rsa2, "RS256", headers={"kid": "k2"}))
    assert jwks_server.requests == 2

    assert verifier.ready
    assert await verifier.verify(minter.sign(keys.rsa, "RS256", headers={"kid": "k1"}))


async def test_a_kid_dropped_from_the_jwks_drops_the_tokens_it_verified(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"), public_jwk(keys.rsa2, kid="k2"))
    verifier = await make_verifier(settings(jwks_server), cls=CountingVerifier)
    assert isinstance(verifier, CountingVerifier)
    old = minter.sign(keys.rsa, "RS256", headers={"kid": "k1"})
    kept = minter.sign(keys.rsa2, "RS256", headers={"kid": "k2"})
    await verifier.verify(old)
    await verifier.verify(kept)
    assert verifier.cached == 2

    jwks_server.publish(public_jwk(keys.rsa2, kid="k2"), public_jwk(keys.ec, kid="k3"))
    minter.clock.advance(31)
    await verifier.verify(minter.sign(keys.ec, "ES256", headers={"kid": "k3"}))

    assert verifier.cached == 2  # kept + the k3 token; the k1 token is gone
    with pytest.raises(InvalidToken, match="no trusted key"):
        await verifier.verify(old)
    checks = verifier.signature_checks
    await verifier.verify(kept)
    assert verifier.signature_checks == checks


async def test_a_kid_whose_key_material_changes_drops_the_tokens_it_verified(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    verifier = await make_verifier(settings(jwks_server))
    old = minter.sign(keys.rsa, "RS256", headers={"kid": "k1"})
    await verifier.verify(old)

    jwks_server.publish(public_jwk(keys.rsa2, kid="k1"))
    jwks = verifier.jwks
    assert jwks is not None
    assert await jwks.refresh(rate_limited=False)

    with pytest.raises(InvalidToken, match="signature does not verify"):
        await verifier.verify(old)


async def test_start_survives_a_jwks_outage_and_becomes_ready_when_it_ends(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.status = 503
    verifier = await make_verifier(settings(jwks_server))
    assert not verifier.ready
    token = minter.sign(keys.rsa, "RS256", headers={"kid": "k1"})
    with pytest.raises(ServiceUnavailable) as caught:
        await verifier.verify(token)
    assert caught.value.headers["Retry-After"]

    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    # The background task retries RETRY_FIRST_DELAY after the failure, on the clock.
    await eventually(lambda: minter.clock.idlers == 1, what="the refresh loop waits")
    assert not verifier.ready
    minter.clock.advance(RETRY_FIRST_DELAY)
    await eventually(lambda: verifier.ready)

    assert (await verifier.verify(token)).subject == "dev1"


async def test_the_jwks_is_refreshed_periodically(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    await make_verifier(settings(jwks_server, jwks_cache_ttl=60))
    assert jwks_server.requests == 1
    for fetches in (2, 3):
        # Each refresh waits one TTL on the clock, and only then fetches.
        await eventually(lambda: minter.clock.idlers == 1, what="the refresh loop waits")
        assert jwks_server.requests == fetches - 1
        minter.clock.advance(60)
        await eventually(lambda n=fetches: jwks_server.requests == n)  # type: ignore[misc]


async def test_close_stops_the_background_refresh(
    jwks_server: JWKSServer, session: object, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    verifier = JWTVerifier(settings(jwks_server, jwks_cache_ttl=0.05), clock=minter.clock)
    await verifier.start()  # with its own session, closed by close()
    await eventually(lambda: minter.clock.idlers == 1, what="the refresh loop waits")
    await verifier.close()
    seen = jwks_server.requests
    # The loop was waiting on the clock; once closed, moving time past its refresh is
    # decided: no task is left to fetch.
    assert minter.clock.idlers == 0
    minter.clock.advance(3600)
    await asyncio.sleep(0)
    assert jwks_server.requests == seen


async def test_without_start_the_first_token_loads_the_jwks(
    jwks_server: JWKSServer, session: aiohttp.ClientSession, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    verifier = JWTVerifier(settings(jwks_server), session=session, clock=minter.clock)
    assert not verifier.ready
    try:
        token = minter.sign(keys.rsa, "RS256", headers={"kid": "k1"})
        assert (await verifier.verify(token)).subject == "dev1"
        assert verifier.ready
    finally:
        await verifier.close()


async def test_private_parameters_in_a_jwks_are_never_used_for_more_than_verifying(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    leaked = RSAAlgorithm.to_jwk(keys.rsa, as_dict=True) | {"kid": "k1"}
    assert "d" in leaked
    del leaked["key_ops"]  # PyJWT marks a private JWK ["sign"], which would (rightly) exclude it
    jwks_server.publish(leaked)
    verifier = await make_verifier(settings(jwks_server))

    token = minter.sign(keys.rsa, "RS256", headers={"kid": "k1"})
    assert (await verifier.verify(token)).subject == "dev1"
