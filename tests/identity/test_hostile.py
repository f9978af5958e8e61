"""The corpus of hostile JWTs: each is refused with InvalidToken and a precise reason."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256

from authserver.errors import InvalidToken
from authserver.identity import JWTSettings, JWTVerifier
from tests.identity.conftest import JWKSServer, MakeVerifier, RecordingServer
from tests.identity.test_verify import CountingVerifier
from tests.identity.tokens import (
    ISSUER,
    SECRET,
    Keys,
    Minter,
    b64,
    public_jwk,
    public_pem,
    with_member,
)

AUDIENCE = "authserver"


def hs256_with(secret: bytes) -> Callable[[bytes], bytes]:
    """An HMAC-SHA256 signer, for tokens PyJWT refuses to make (a PEM as the secret)."""
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def rs256_with(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    """An RS256 signer, for hand-built headers and payloads."""
    return lambda data: key.sign(data, padding.PKCS1v15(), SHA256())


Case = Callable[[Minter, Keys], str]


def good_claims(minter: Minter, **extra: Any) -> dict[str, Any]:
    """Claims that pass every check of the RS256 verifier below."""
    return minter.claims({"iss": ISSUER, "aud": AUDIENCE, **extra})


def with_claims(drop: tuple[str, ...] = (), **extra: Any) -> Case:
    """An otherwise good RS256 token with these claim changes (built by hand: PyJWT
    refuses to encode some of them)."""
    return lambda m, k: m.forge(
        {"alg": "RS256", "typ": "JWT"},
        m.claims({"iss": ISSUER, "aud": AUDIENCE, **extra}, drop),
        rs256_with(k.rsa),
    )


def tampered_signature(m: Minter, k: Keys) -> str:
    token = m.sign(k.rsa, "RS256", claims={"iss": ISSUER, "aud": AUDIENCE})
    head, _, signature = token.rpartition(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return m.remember(f"{head}.{signature[:middle]}{flipped}{signature[middle + 1 :]}")


def non_canonical_signature(m: Minter, k: Keys) -> str:
    token = m.sign(k.rsa, "RS256", claims={"iss": ISSUER, "aud": AUDIENCE})
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(token.rpartition(".")[2]) % 4 == 2  # 256 bytes: the last character has 4 spare bits
    last = alphabet.index(token[-1])
    return m.remember(token[:-1] + alphabet[last | 1])  # same bytes, another spelling


def tampered_payload(m: Minter, k: Keys) -> str:
    token = m.sign(k.rsa, "RS256", claims={"iss": ISSUER, "aud": AUDIENCE})
    header, _, signature = token.split(".")
    payload = b64(json.dumps(good_claims(m, sub="admin")).encode())
    return m.remember(f"{header}.{payload}.{signature}")


def pem_as_hmac_secret(family: str) -> Case:
    def make(m: Minter, k: Keys) -> str:
        secret = public_pem(k.rsa if family == "rsa" else k.ec).encode()
        return m.forge({"alg": "HS256", "typ": "JWT"}, good_claims(m), hs256_with(secret))

    return make


CORPUS: list[tuple[str, Case, str]] = [
    # algorithm games
    ("alg none, no signature",
     lambda m, k: m.forge({"alg": "none"}, good_claims(m)), "non-base64url segment"),
    ("alg none, junk signature",
     lambda m, k: m.forge({"alg": "none"}, good_claims(m), signature="AAAA"), "algorithm"),
    ("alg None", lambda m, k: m.forge({"alg": "None"}, good_claims(m), signature="AAAA"),
     "algorithm"),
    ("alg missing", lambda m, k: m.forge({"typ": "JWT"}, good_claims(m), signature="AAAA"),
     "algorithm"),
    ("alg not a string",
     lambda m, k: m.forge({"alg": ["RS256"]}, good_claims(m), signature="AAAA"), "algorithm"),
    ("HS256 signed with the RSA public key PEM", pem_as_hmac_secret("rsa"), "algorithm"),
    ("HS256 signed with the EC public key PEM", pem_as_hmac_secret("ec"), "algorithm"),
    ("RS384 (valid, but not configured)",
     lambda m, k: m.sign(k.rsa, "RS384", claims={"iss": ISSUER, "aud": AUDIENCE}), "algorithm"),
    # signature
    ("bad signature", tampered_signature, "signature does not verify"),
    ("payload changed after signing", tampered_payload, "signature does not verify"),
    ("signature spelled non-canonically", non_canonical_signature, "not canonical base64url"),
    ("signed by another RSA key",
     lambda m, k: m.sign(k.rsa2, "RS256", claims={"iss": ISSUER, "aud": AUDIENCE}),
     "signature does not verify"),
    # time
    ("expired", with_claims(exp=1_799_999_000), "expired"),
    ("nbf in the future", with_claims(nbf=1_800_000_600), "not valid yet"),
    ("iat in the future", with_claims(iat=1_800_000_600), "issued in the future"),
    ("missing exp", with_claims(drop=("exp",)), "no 'exp' claim"),
    ("exp as a string", with_claims(exp="1900000000"), "'exp' claim is not a number"),
    ("exp as a boolean", with_claims(exp=True), "'exp' claim is not a number"),
    ("exp out of range", with_claims(exp=10**400), "'exp' claim is out of range"),
    ("nbf as a string", with_claims(nbf="0"), "'nbf' claim is not a number"),
    # issuer and audience
    ("wrong iss", with_claims(iss="https://evil.example"), "issuer is not accepted"),
    ("iss a prefix of ours", with_claims(iss="https://idp"), "issuer is not accepted"),
    ("iss as a list", with_claims(iss=[ISSUER]), "issuer is not accepted"),
    ("missing iss", with_claims(drop=("iss",)), "no 'iss' claim"),
    ("wrong aud", with_claims(aud="someone-else"), "audience is not accepted"),
    ("aud list without ours", with_claims(aud=["a", "b"]), "audience is not accepted"),
    ("aud a substring of ours", with_claims(aud="auth"), "audience is not accepted"),
    ("aud as an object", with_claims(aud={"authserver": 1}), "audience is not accepted"),
    ("missing aud", with_claims(drop=("aud",)), "no 'aud' claim"),
    # subject
    ("subject missing", with_claims(drop=("sub",)), "no 'sub' claim"),
    ("subject a number", with_claims(sub=42), "not a non-empty string"),
    ("subject a list", with_claims(sub=["dev1"]), "not a non-empty string"),
    ("subject empty", with_claims(sub=""), "not a non-empty string"),
    # headers
    ("crit header",
     lambda m, k: m.sign(k.rsa, "RS256", claims={"iss": ISSUER, "aud": AUDIENCE},
                         headers={"crit": ["exp"], "exp": 1}), "crit"),
    ("crit b64=false (detached payload)",
     lambda m, k: m.forge({"alg": "RS256", "crit": ["b64"], "b64": False}, b"",
                          rs256_with(k.rsa)), "non-base64url segment"),
    ("crit b64=false with a payload",
     lambda m, k: m.forge({"alg": "RS256", "crit": ["b64"], "b64": False}, good_claims(m),
                          rs256_with(k.rsa)), "crit"),
    ("kid not a string",
     lambda m, k: m.forge({"alg": "RS256", "kid": 7}, good_claims(m), rs256_with(k.rsa)),
     "key id (kid) is not a string"),
    # duplicate members: json.loads keeps the last one, another parser the first
    ("two sub claims",
     lambda m, k: m.forge({"alg": "RS256"}, with_member(good_claims(m), '"sub": "admin"'),
                          rs256_with(k.rsa)), "payload names the same member twice"),
    ("two sub claims, one spelled with an escape",
     lambda m, k: m.forge({"alg": "RS256"}, with_member(good_claims(m), '"\\u0073ub": "admin"'),
                          rs256_with(k.rsa)), "payload names the same member twice"),
    ("two exp claims",
     lambda m, k: m.forge({"alg": "RS256"}, with_member(good_claims(m), '"exp": 4000000000'),
                          rs256_with(k.rsa)), "payload names the same member twice"),
    ("a nested claim object with a duplicate member",
     lambda m, k: m.forge({"alg": "RS256"},
                          with_member(good_claims(m), '"cnf": {"jkt": "a", "jkt": "b"}'),
                          rs256_with(k.rsa)), "payload names the same member twice"),
    ("two alg headers",
     lambda m, k: m.forge(b'{"alg": "none", "alg": "RS256"}', good_claims(m), rs256_with(k.rsa)),
     "header names the same member twice"),
    ("two kid headers",
     lambda m, k: m.forge(b'{"alg": "RS256", "kid": "a", "kid": "b"}', good_claims(m),
                          rs256_with(k.rsa)), "header names the same member twice"),
    # shape
    ("empty", lambda m, k: "", "three dot-separated segments"),
    ("one segment", lambda m, k: tampered_signature(m, k).split(".")[0],
     "three dot-separated segments"),
    ("two segments", lambda m, k: tampered_signature(m, k).rpartition(".")[0],
     "three dot-separated segments"),
    ("four segments", lambda m, k: tampered_signature(m, k) + ".AAAA",
     "three dot-separated segments"),
    ("non-base64 segments", lambda m, k: "!!!.???.***", "non-base64url segment"),
    ("padded segments", lambda m, k: "eyJhbGciOiJSUzI1NiJ9=.e30=.AAAA",
     "non-base64url segment"),
    ("base64 with a bad length", lambda m, k: "eyJhbGciOiJSUzI1NiJ9A.e30.AAAA",
     "header is not base64url"),
    ("header not JSON", lambda m, k: f"{b64(b'not json')}.e30.AAAA", "header is not JSON"),
    ("header a JSON list", lambda m, k: f"{b64(b'[1]')}.e30.AAAA", "header is not a JSON object"),
    ("payload not JSON (but signed)",
     lambda m, k: m.forge({"alg": "RS256"}, b"not json", rs256_with(k.rsa)),
     "payload is not JSON"),
    ("payload a JSON list (but signed)",
     lambda m, k: m.forge({"alg": "RS256"}, b"[]", rs256_with(k.rsa)),
     "payload is not a JSON object"),
    ("non-ASCII token", lambda m, k: "eyJhbGciOiJSUzI1NiJ9.é.AAAA", "not ASCII"),
    ("1 MB token",
     lambda m, k: m.forge({"alg": "RS256"}, good_claims(m, pad="x" * 1_000_000),
                          rs256_with(k.rsa)), "larger than 8192 bytes"),
]  # fmt: skip


@pytest.fixture
async def rs256(make_verifier: MakeVerifier, keys: Keys) -> JWTVerifier:
    """A strict RS256 verifier: issuer and audience configured, leeway 30 s."""
    return await make_verifier(
        JWTSettings(
            algorithms=("RS256",),
            public_key_pem=public_pem(keys.rsa),
            issuer=ISSUER,
            audience=AUDIENCE,
        ),
        cls=CountingVerifier,
    )


async def test_the_reference_token_of_the_corpus_is_accepted(
    rs256: JWTVerifier, minter: Minter, keys: Keys
) -> None:
    token = minter.sign(keys.rsa, "RS256", claims={"iss": ISSUER, "aud": AUDIENCE})
    assert (await rs256.verify(token)).subject == "dev1"


@pytest.mark.parametrize(("case", "reason"), [(c[1], c[2]) for c in CORPUS],
                         ids=[c[0] for c in CORPUS])  # fmt: skip
async def test_hostile_tokens_are_refused(
    rs256: JWTVerifier, minter: Minter, keys: Keys, case: Case, reason: str
) -> None:
    token = case(minter, keys)

    with pytest.raises(InvalidToken) as caught:
        await rs256.verify(token)

    assert reason in caught.value.detail
    assert not token or token not in caught.value.detail
    assert caught.value.status == 401
    assert rs256.cached == 0


async def test_oversized_tokens_are_refused_before_any_parsing(
    rs256: JWTVerifier, minter: Minter, keys: Keys
) -> None:
    assert isinstance(rs256, CountingVerifier)
    token = minter.forge({"alg": "RS256"}, good_claims(minter, pad="x" * 10_000),
                         rs256_with(keys.rsa))  # fmt: skip
    with pytest.raises(InvalidToken, match="larger than"):
        await rs256.verify(token)
    assert rs256.signature_checks == 0


async def test_the_algorithm_allow_list_is_checked_before_any_key_is_used(
    make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("ES256",), public_key_pem=public_pem(keys.ec)),
        cls=CountingVerifier,
    )
    assert isinstance(verifier, CountingVerifier)
    with pytest.raises(InvalidToken, match="algorithm"):
        await verifier.verify(pem_as_hmac_secret("ec")(minter, keys))
    assert verifier.signature_checks == 0


async def test_with_hmac_and_rsa_both_configured_an_hs256_token_is_checked_with_the_secret(
    make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    verifier = await make_verifier(
        JWTSettings(
            issuer=ISSUER,
            algorithms=("RS256", "HS256"),
            secret=SECRET,
            public_key_pem=public_pem(keys.rsa),
        )
    )
    confused = pem_as_hmac_secret("rsa")(minter, keys)
    with pytest.raises(InvalidToken, match="signature does not verify"):
        await verifier.verify(confused)
    assert (await verifier.verify(minter.sign(SECRET, "HS256"))).subject == "dev1"


async def test_hostile_kids_are_unknown_kids_and_cost_at_most_one_refresh(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("RS256",), jwks_url=jwks_server.url)
    )
    minter.clock.advance(31)

    for kid in ["../../etc/passwd", "' OR 1=1 --", "/dev/zero", "k1\x00", "%00", "x" * 5000]:
        token = minter.sign(keys.rsa, "RS256", headers={"kid": kid})
        with pytest.raises(InvalidToken, match="no trusted key"):
            await verifier.verify(token)

    assert jwks_server.requests == 2


@pytest.mark.parametrize("config", ["pem", "jwks"])
async def test_jku_x5u_jwk_and_x5c_headers_are_never_fetched_nor_used(
    config: str,
    jwks_server: JWKSServer,
    attacker_server: RecordingServer,
    make_verifier: MakeVerifier,
    minter: Minter,
    keys: Keys,
) -> None:
    jwks_server.publish(public_jwk(keys.rsa, kid="k1"))
    if config == "pem":
        settings = JWTSettings(
            issuer=ISSUER, algorithms=("RS256",), public_key_pem=public_pem(keys.rsa)
        )
    else:
        settings = JWTSettings(issuer=ISSUER, algorithms=("RS256",), jwks_url=jwks_server.url)
    verifier = await make_verifier(settings)
    minter.clock.advance(31)  # an unknown kid may refresh the real JWKS; never anything else
    attacker_jwk = public_jwk(keys.rsa2, kid="k1", alg="RS256")
    hostile_headers: list[dict[str, Any]] = [
        {"kid": "k1", "jku": attacker_server.url("/jwks.json")},
        {"kid": "evil", "jku": attacker_server.url("/jwks.json")},
        {"kid": "k1", "x5u": attacker_server.url("/cert.pem")},
        {"kid": "k1", "jwk": attacker_jwk},
        {"jwk": attacker_jwk},
        {"kid": "k1", "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]},
        {"kid": "k1", "jku": attacker_server.url("/a"), "x5u": attacker_server.url("/b"),
         "jwk": attacker_jwk},
    ]  # fmt: skip

    for headers in hostile_headers:
        token = minter.sign(keys.rsa2, "RS256", headers=headers)
        with pytest.raises(InvalidToken, match=r"signature does not verify|no trusted key"):
            await verifier.verify(token)

    assert attacker_server.requests == []
    assert jwks_server.requests <= 2
    # The same headers on a token signed by the trusted key change nothing either.
    honest = minter.sign(keys.rsa, "RS256", headers=hostile_headers[-1])
    assert (await verifier.verify(honest)).subject == "dev1"
    assert attacker_server.requests == []


async def test_an_ec_point_not_on_the_curve_in_the_jwks_is_ignored(
    jwks_server: JWKSServer, make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    bad = public_jwk(keys.ec, kid="bad")
    bad["y"] = bad["x"]  # almost surely not on P-256 (invalid-curve attack material)
    good = public_jwk(keys.ec2, kid="good")
    jwks_server.publish(bad, good)
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("ES256",), jwks_url=jwks_server.url)
    )
    jwks = verifier.jwks
    assert jwks is not None
    assert jwks.keys is not None
    assert jwks.keys.kids == {"good"}
