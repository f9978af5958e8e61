"""Verification with keys from settings: every algorithm family, claims, leeway, the cache."""

from __future__ import annotations

import logging

import pytest

from authserver.errors import InvalidToken
from authserver.identity import (
    JWTSettings,
    JWTVerifier,
    bearer_token,
    fingerprint,
)
from authserver.identity.keys import VerificationKey
from tests.identity.conftest import MakeVerifier
from tests.identity.tokens import ISSUER, SECRET, Keys, Minter, public_pem


class CountingVerifier(JWTVerifier):
    """Counts signature checks, to prove which verifications the cache answered."""

    signature_checks = 0

    def _check_signature(self, key: VerificationKey, signing_input: bytes, sig: bytes) -> bool:
        self.signature_checks += 1
        return super()._check_signature(key, signing_input, sig)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_algorithms_verify_with_the_secret(
    make_verifier: MakeVerifier, minter: Minter, alg: str
) -> None:
    verifier = await make_verifier(JWTSettings(issuer=ISSUER, algorithms=(alg,), secret=SECRET))
    token = minter.sign(SECRET, alg, claims={"groups": ["ops"]})

    identity = await verifier.verify(token)

    assert identity.subject == "dev1"
    assert identity.claims["groups"] == ["ops"]
    assert identity.expires_at == minter.clock.time() + 300
    assert identity.issued_at == minter.clock.time()
    assert identity.fingerprint == fingerprint(token)
    with pytest.raises(TypeError):
        identity.claims["sub"] = "someone-else"  # type: ignore[index]


@pytest.mark.parametrize(
    ("family", "alg"),
    [("rsa", "RS256"), ("rsa", "RS512"), ("rsa", "PS256"), ("ec", "ES256"), ("ed", "EdDSA")],
)
async def test_public_key_algorithms_verify_with_the_pem(
    make_verifier: MakeVerifier, minter: Minter, keys: Keys, family: str, alg: str
) -> None:
    private = getattr(keys, family)
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=(alg,), public_key_pem=public_pem(private))
    )

    identity = await verifier.verify(minter.sign(private, alg))

    assert identity.subject == "dev1"
    assert verifier.ready


async def test_a_token_from_another_key_of_the_same_family_is_refused(
    make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("ES256",), public_key_pem=public_pem(keys.ec))
    )
    with pytest.raises(InvalidToken, match="signature does not verify"):
        await verifier.verify(minter.sign(keys.ec2, "ES256"))


async def test_issuer_audience_and_subject_claim_come_from_settings(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    verifier = await make_verifier(
        JWTSettings(
            algorithms=("HS256",),
            secret=SECRET,
            issuer="https://idp.example",
            audience="authserver",
            subject_claim="device_id",
        )
    )
    good = {"iss": "https://idp.example", "aud": ["other", "authserver"], "device_id": "d-7"}

    identity = await verifier.verify(minter.sign(SECRET, claims=good))

    assert identity.subject == "d-7"
    # Cached identities share one copy of the issuer (100k of them stay in memory).
    other = await verifier.verify(minter.sign(SECRET, claims={**good, "device_id": "d-8"}))
    assert other.claims["iss"] is identity.claims["iss"]
    assert other.claims["aud"] == ["other", "authserver"]


# --- time: the injected clock, the leeway, and why the verifier checks exp itself ---------------
# PyJWT compares exp/nbf/iat with time.time(); the verifier checks them against its Clock so
# that the verified-token cache, the leeway and these tests agree on "now".


@pytest.mark.parametrize(("leeway", "accepted"), [(30.0, True), (0.0, False)])
async def test_a_token_expired_ten_seconds_ago_passes_only_within_the_leeway(
    make_verifier: MakeVerifier, minter: Minter, leeway: float, accepted: bool
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET, leeway=leeway)
    )
    token = minter.sign(SECRET, lifetime=60)
    minter.clock.advance(70)

    if accepted:
        assert (await verifier.verify(token)).subject == "dev1"
    else:
        with pytest.raises(InvalidToken, match="expired"):
            await verifier.verify(token)


@pytest.mark.parametrize(("leeway", "accepted"), [(30.0, True), (0.0, False)])
async def test_nbf_ten_seconds_ahead_passes_only_within_the_leeway(
    make_verifier: MakeVerifier, minter: Minter, leeway: float, accepted: bool
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET, leeway=leeway)
    )
    token = minter.sign(SECRET, claims={"nbf": int(minter.clock.time()) + 10})

    if accepted:
        assert (await verifier.verify(token)).subject == "dev1"
    else:
        with pytest.raises(InvalidToken, match="not valid yet"):
            await verifier.verify(token)


async def test_iat_is_optional_but_not_from_the_future(hs256: JWTVerifier, minter: Minter) -> None:
    assert (await hs256.verify(minter.sign(SECRET, drop=["iat"]))).issued_at is None
    future = int(minter.clock.time()) + 3600
    with pytest.raises(InvalidToken, match="issued in the future"):
        await hs256.verify(minter.sign(SECRET, claims={"iat": future}))


# --- the verified-token cache ---------------------------------------------------------------


async def test_a_second_verify_of_the_same_token_skips_the_signature(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET), cls=CountingVerifier
    )
    assert isinstance(verifier, CountingVerifier)
    token = minter.sign(SECRET)

    first = await verifier.verify(token)
    second = await verifier.verify(token)

    assert second is first
    assert verifier.signature_checks == 1
    assert verifier.cached == 1


async def test_verify_after_a_miss_keys_the_cache_by_its_own_token(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    # `verify` reuses the digest `remembered` made of the token it did not know, and only
    # for that token: another one verified next is remembered under its own digest.
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET), cls=CountingVerifier
    )
    assert isinstance(verifier, CountingVerifier)
    alice = minter.sign(SECRET, claims={"sub": "alice"})
    bob = minter.sign(SECRET, claims={"sub": "bob"})

    assert verifier.remembered(alice) is None
    assert (await verifier.verify(bob)).subject == "bob"
    assert verifier.remembered(alice) is None
    assert (await verifier.verify(alice)).subject == "alice"

    for token, subject in ((bob, "bob"), (alice, "alice")):
        again = verifier.remembered(token)
        assert again is not None
        assert again.subject == subject
    assert verifier.signature_checks == 2


async def test_a_cached_token_is_not_served_past_its_exp(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET, leeway=0),
        cls=CountingVerifier,
    )
    assert isinstance(verifier, CountingVerifier)
    token = minter.sign(SECRET, lifetime=60)
    await verifier.verify(token)

    minter.clock.advance(59)
    await verifier.verify(token)
    assert verifier.signature_checks == 1
    minter.clock.advance(1)
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)
    assert verifier.cached == 0


async def test_within_the_leeway_after_exp_the_token_is_verified_again_not_cached(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET, leeway=30),
        cls=CountingVerifier,
    )
    assert isinstance(verifier, CountingVerifier)
    token = minter.sign(SECRET, lifetime=60)
    await verifier.verify(token)

    minter.clock.advance(70)
    await verifier.verify(token)
    assert verifier.signature_checks == 2
    minter.clock.advance(25)
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)


async def test_the_cache_is_bounded_and_evicts_the_least_recently_used(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET, cache_size=2),
        cls=CountingVerifier,
    )
    assert isinstance(verifier, CountingVerifier)
    a, b, c = (minter.sign(SECRET, claims={"sub": name}) for name in "abc")
    for token in (a, b, a, c):
        await verifier.verify(token)
    assert verifier.cached == 2
    assert verifier.signature_checks == 3

    await verifier.verify(a)
    assert verifier.signature_checks == 3
    await verifier.verify(b)
    assert verifier.signature_checks == 4


async def test_expired_tokens_are_forgotten_as_new_ones_come_not_when_the_cache_is_full(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    # A renewed JWT is never sent again: kept until the cache filled, the memory followed
    # every JWT ever seen (bench/soak.py's RSS grew all through its second half).
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET, leeway=0)
    )
    for name in "abcde":
        await verifier.verify(minter.sign(SECRET, lifetime=60, claims={"sub": name}))
    assert verifier.cached == 5
    minter.clock.advance(120)
    for name in "fgh":
        await verifier.verify(minter.sign(SECRET, lifetime=600, claims={"sub": name}))
    assert verifier.cached == 3  # two expired ones go with each new one


async def test_a_cache_size_of_zero_disables_the_cache(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET, cache_size=0)
    )
    await verifier.verify(minter.sign(SECRET))
    assert verifier.cached == 0


async def test_the_cache_is_bounded_by_bytes_and_still_answers(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    # JWTs with 2 KB of claims each: 30 KB holds about a dozen, well under the 1,000 entries.
    verifier = await make_verifier(
        JWTSettings(
            issuer=ISSUER,
            algorithms=("HS256",),
            secret=SECRET,
            cache_size=1000,
            cache_bytes=30_000,
        ),
        cls=CountingVerifier,
    )
    assert isinstance(verifier, CountingVerifier)
    tokens = [minter.sign(SECRET, claims={"sub": f"dev{n}", "pad": "x" * 2000}) for n in range(40)]
    for token in tokens:
        identity = await verifier.verify(token)
        assert identity.subject == f"dev{tokens.index(token)}"
        assert verifier._cache.bytes <= 30_000
    assert 5 <= verifier.cached < 40
    checks = verifier.signature_checks
    assert verifier.remembered(tokens[-1]) is not None  # the newest stay remembered
    assert verifier.remembered(tokens[0]) is None  # the oldest went for room
    assert (await verifier.verify(tokens[0])).subject == "dev0"  # verified afresh
    assert verifier.signature_checks == checks + 1
    assert verifier._cache.bytes <= 30_000


async def test_refusals_are_not_cached(make_verifier: MakeVerifier, minter: Minter) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET), cls=CountingVerifier
    )
    assert isinstance(verifier, CountingVerifier)
    forged = minter.sign("another-secret-of-enough-length-for-hs256!")
    for _ in range(2):
        with pytest.raises(InvalidToken, match="signature"):
            await verifier.verify(forged)
    assert verifier.signature_checks == 2
    assert verifier.cached == 0


# --- the Authorization header ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer abc.d-f.g_i", "abc.d-f.g_i"),
     ("BEARER  abc.def.ghi ", "abc.def.ghi")],
)  # fmt: skip
def test_bearer_token_parses_the_scheme_case_insensitively(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header", [None, "", "   ", "Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Bearer a\nb",
               "Bearerabc", "Bearer a,b", "Token abc"],
)  # fmt: skip
def test_bearer_token_refuses_missing_or_malformed_headers(header: str | None) -> None:
    with pytest.raises(InvalidToken) as caught:
        bearer_token(header)
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")


async def test_refusals_carry_the_bearer_challenge(hs256: JWTVerifier) -> None:
    with pytest.raises(InvalidToken) as caught:
        await hs256.verify("not-a-jwt")
    assert caught.value.status == 401
    assert caught.value.headers == {"WWW-Authenticate": 'Bearer error="invalid_token"'}


# --- settings that cannot work fail at construction ------------------------------------------


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (JWTSettings(issuer=ISSUER, algorithms=()), "no JWT algorithm"),
        (JWTSettings(issuer="", algorithms=("HS256",), secret=SECRET), "no JWT issuer"),
        (
            JWTSettings(issuer=ISSUER, algorithms=("none",), secret=SECRET),
            "unsupported JWT algorithm 'none'",
        ),
        (JWTSettings(issuer=ISSUER, algorithms=("HS256",)), "HS256 needs a secret"),
        (
            JWTSettings(issuer=ISSUER, algorithms=("HS512",), secret="x" * 32),
            "HS512: The HMAC key is 32 bytes",
        ),
        (JWTSettings(issuer=ISSUER, algorithms=("RS256",)), "RS256 needs a fitting PEM public key"),
        (
            JWTSettings(issuer=ISSUER, algorithms=("RS256",), public_key_pem="junk"),
            "not a usable PEM",
        ),
    ],
)
def test_unusable_settings_are_refused_at_construction(settings: JWTSettings, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        JWTVerifier(settings)


def test_a_pem_of_the_wrong_family_is_refused(keys: Keys) -> None:
    with pytest.raises(ValueError, match="ES256 needs a fitting PEM"):
        JWTVerifier(
            JWTSettings(issuer=ISSUER, algorithms=("ES256",), public_key_pem=public_pem(keys.rsa))
        )


def test_a_pem_is_refused_as_an_hmac_secret(keys: Keys) -> None:
    with pytest.raises(ValueError, match="HS256: the secret cannot be used"):
        JWTVerifier(JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=public_pem(keys.rsa)))


# --- logging ----------------------------------------------------------------------------------


async def test_debug_logs_name_tokens_by_fingerprint_only(
    hs256: JWTVerifier, minter: Minter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="authserver")
    good = minter.sign(SECRET)
    bad = minter.sign(SECRET, drop=["exp"])

    await hs256.verify(good)
    with pytest.raises(InvalidToken):
        await hs256.verify(bad)

    logged = caplog.text
    assert f"JWT {fingerprint(good)} verified" in logged
    assert f"JWT {fingerprint(bad)} refused: the token has no 'exp' claim" in logged
    assert good not in logged
    assert bad not in logged
    # the teardown fixture repeats this check for every token every identity test made


def test_fingerprint_is_the_first_8_hex_digits_of_sha256() -> None:
    assert fingerprint("abc") == "ba7816bf"


async def test_claims_are_read_only_compact_and_share_their_names(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    # The verifier remembers many identities: their claims keep values each and one name
    # table per set of claim names, and read like the mapping they stand for.
    verifier = await make_verifier(JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET))
    one = await verifier.verify(minter.sign(SECRET, "HS256", claims={"tenant": "t1", "n": 1}))
    two = await verifier.verify(
        minter.sign(SECRET, "HS256", claims={"tenant": "t2", "n": 2, "sub": "dev2"})
    )
    assert one.claims._names is two.claims._names  # type: ignore[attr-defined]
    assert dict(two.claims)["sub"] == "dev2"
    assert two.claims == {**dict(one.claims), "sub": "dev2", "tenant": "t2", "n": 2}
    assert two.claims.get("tenant") == "t2"
    assert two.claims.get("absent", "x") == "x"
    assert "n" in two.claims
    assert "absent" not in two.claims
    assert len(two.claims) == len(dict(two.claims))
    with pytest.raises(KeyError):
        two.claims["absent"]
    with pytest.raises(TypeError):
        two.claims["tenant"] = "t1"  # type: ignore[index]


async def test_a_remembered_identity_holds_its_jwts_own_numbers(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    # exp and iat as the claims' own ints, not float copies: 48 bytes per remembered JWT.
    verifier = await make_verifier(JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET))
    identity = await verifier.verify(minter.sign(SECRET))
    assert identity.expires_at is identity.claims["exp"]
    assert identity.issued_at is identity.claims["iat"]
    # Remembered as itself, its key named in it, not in a pair beside it (56 bytes a JWT).
    assert list(verifier._cache._data.values()) == [identity]
    assert identity.key_ref
