"""The direct HS*/RS* signature checks and the verifier's shortcuts refuse what the slow path did.

HS* and RS* signatures are checked without PyJWT's Algorithm (identity/keys.py), flat claims
skip the nesting walk, and plain int dates skip the float checks: every refusal must still be
made, so each shortcut meets a token it must refuse here.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.hashes import SHA256, SHA384

from authserver.errors import InvalidToken
from authserver.identity import JWTSettings, JWTVerifier
from authserver.identity.keys import static_keys
from authserver.identity.verifier import MAX_NESTING
from tests.identity.conftest import MakeVerifier
from tests.identity.tokens import ISSUER, SECRET, Keys, Minter, b64, public_pem, with_member

AUDIENCE = "authserver"
DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def hmac_signer(alg: str, secret: str = SECRET) -> Any:
    """An HMAC signer for hand-built tokens."""
    return lambda data: hmac.new(secret.encode(), data, DIGESTS[alg]).digest()


def flip(token: str, at: int) -> str:
    """The token with the signature character at `at` replaced by another one."""
    head, _, signature = token.rpartition(".")
    other = "A" if signature[at] != "A" else "B"
    return f"{head}.{signature[:at]}{other}{signature[at + 1 :]}"


async def refused(verifier: JWTVerifier, token: str, reason: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    assert reason in caught.value.detail


@pytest.fixture
async def strict_hs256(make_verifier: MakeVerifier) -> JWTVerifier:
    """HS256 only, issuer and audience configured."""
    return await make_verifier(
        JWTSettings(issuer=ISSUER, audience=AUDIENCE, algorithms=("HS256",), secret=SECRET)
    )


def test_hs_and_rs_keys_get_a_direct_check_and_the_others_keep_pyjwts(keys: Keys) -> None:
    hs, _ = static_keys(("HS256", "HS384", "HS512"), SECRET, None)
    rs, _ = static_keys(("RS256", "RS384", "RS512", "PS256"), None, public_pem(keys.rsa))
    es, _ = static_keys(("ES256",), None, public_pem(keys.ec))
    assert all(key._direct is not None for key in [*hs.values(), *rs.values()] if key.alg[0] != "P")
    assert rs["PS256"]._direct is None
    assert es["ES256"]._direct is None


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_direct_check_refuses_every_wrong_signature(
    make_verifier: MakeVerifier, minter: Minter, alg: str
) -> None:
    verifier = await make_verifier(JWTSettings(issuer=ISSUER, algorithms=(alg,), secret=SECRET))
    good = minter.sign(SECRET, alg)
    assert (await verifier.verify(good)).subject == "dev1"
    head, _, signature = good.rpartition(".")
    await refused(verifier, flip(good, 0), "signature does not verify")
    await refused(verifier, flip(good, len(signature) // 2), "signature does not verify")
    mac = hmac_signer(alg)(head.encode())
    await refused(verifier, f"{head}.{b64(mac[:-1])}", "signature does not verify")  # a prefix
    await refused(verifier, f"{head}.{b64(mac + b'0')}", "signature does not verify")  # longer
    await refused(verifier, minter.sign(SECRET + "x", alg), "signature does not verify")
    # The MAC of another HS digest under this token's header: a wrong length and value.
    other = "HS512" if alg != "HS512" else "HS256"
    forged_sig = b64(hmac_signer(other)(head.encode()))
    await refused(verifier, f"{head}.{forged_sig}", "signature does not verify")


async def test_a_header_naming_another_algorithm_is_refused_before_the_key_is_used(
    strict_hs256: JWTVerifier, minter: Minter
) -> None:
    claims = minter.claims({"aud": AUDIENCE})
    for alg in ("HS384", "HS512"):  # correctly signed, with the same secret, but not allowed
        token = minter.forge({"alg": alg, "typ": "JWT"}, claims, hmac_signer(alg))
        await refused(strict_hs256, token, "algorithm is not accepted")
    token = minter.forge({"alg": "none"}, claims, signature="AAAA")
    await refused(strict_hs256, token, "algorithm is not accepted")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "someone-else"}, "audience is not accepted"),
        ({"iss": "https://evil.example"}, "issuer is not accepted"),
        ({"exp": 1_799_999_000}, "expired"),
        ({"nbf": 1_800_000_600}, "not valid yet"),
        ({"iat": 1_800_000_600}, "issued in the future"),
        ({"exp": 10**400}, "out of range"),
        ({"exp": -(10**400)}, "out of range"),
        ({"exp": 2**62}, None),  # past the plain-int shortcut: still accepted, far future
        ({"exp": 1_800_000_300.5}, None),  # a float date
        ({"exp": True}, "not a number"),
        ({"nbf": False}, "not a number"),
    ],
)
async def test_claim_checks_on_the_hmac_path(
    strict_hs256: JWTVerifier, minter: Minter, change: dict[str, Any], reason: str | None
) -> None:
    assert minter.clock.time() == 1_800_000_000  # the dates above are relative to it
    claims = {**minter.claims({"aud": AUDIENCE}), **change}
    token = minter.forge({"alg": "HS256"}, claims, hmac_signer("HS256"))
    if reason is None:
        assert (await strict_hs256.verify(token)).expires_at == change["exp"]
    else:
        await refused(strict_hs256, token, reason)


async def test_a_duplicate_claim_name_is_refused_on_the_hmac_path(
    strict_hs256: JWTVerifier, minter: Minter
) -> None:
    claims = minter.claims({"aud": AUDIENCE})
    for member in ('"sub": "admin"', '"\\u0061ud": "x"', '"exp": 4000000000'):
        token = minter.forge({"alg": "HS256"}, with_member(claims, member), hmac_signer("HS256"))
        await refused(strict_hs256, token, "payload names the same member twice")


async def test_rsa_direct_check_refuses_a_wrong_signature_and_hash(
    make_verifier: MakeVerifier, minter: Minter, keys: Keys
) -> None:
    verifier = await make_verifier(
        JWTSettings(issuer=ISSUER, algorithms=("RS256",), public_key_pem=public_pem(keys.rsa))
    )
    good = minter.sign(keys.rsa, "RS256")
    assert (await verifier.verify(good)).subject == "dev1"
    await refused(verifier, flip(good, 10), "signature does not verify")
    await refused(verifier, minter.sign(keys.rsa2, "RS256"), "signature does not verify")
    # Signed with SHA-384 under an RS256 header: the direct check's hash is the header's own.
    head = good.rpartition(".")[0]
    sig = keys.rsa.sign(head.encode(), padding.PKCS1v15(), SHA384())
    await refused(verifier, f"{head}.{b64(sig)}", "signature does not verify")
    sig = keys.rsa.sign(head.encode(), padding.PSS(padding.MGF1(SHA256()), 32), SHA256())
    await refused(verifier, f"{head}.{b64(sig)}", "signature does not verify")


def nested_objects(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_nesting_is_still_refused_with_objects_alone_and_flat_text_with_brackets_passes(
    make_verifier: MakeVerifier, minter: Minter
) -> None:
    # The walk is skipped only for a text with one '{' and no '['.
    verifier = await make_verifier(JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET))
    deep = minter.sign(SECRET, claims={"cnf": nested_objects(MAX_NESTING)})
    await refused(verifier, deep, f"nests deeper than {MAX_NESTING} levels")
    fits = minter.sign(SECRET, claims={"cnf": nested_objects(MAX_NESTING - 1)})
    assert (await verifier.verify(fits)).claims["cnf"] == nested_objects(MAX_NESTING - 1)
    flat = {"note": "{[{[ not JSON structure ]}]}", "n": 1}
    token = minter.sign(SECRET, claims=flat)
    assert (await verifier.verify(token)).claims["note"] == flat["note"]


async def test_issuer_and_audience_values_are_the_settings_own_objects(
    strict_hs256: JWTVerifier, minter: Minter
) -> None:
    # Kept once for every cached identity; a custom claim with the same text is its own.
    token = minter.sign(SECRET, claims={"aud": AUDIENCE, "other": AUDIENCE})
    claims = (await strict_hs256.verify(token)).claims
    settings = strict_hs256._settings
    assert claims["iss"] is settings.issuer
    assert claims["aud"] is settings.audience
    assert claims["other"] == AUDIENCE
    listed = minter.sign(SECRET, claims={"aud": [AUDIENCE, "b"]}, lifetime=200)
    assert (await strict_hs256.verify(listed)).claims["aud"] == [AUDIENCE, "b"]
