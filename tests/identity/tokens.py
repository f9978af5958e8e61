"""Keys, token minting and hand-forged tokens for the identity tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from authserver.clock import ManualClock

ISSUER = "https://idp.example"  # every verifier of these tests accepts only this issuer
SECRET = "test-secret-0123456789abcdef-0123456789abcdef-0123456789abcdef!!"  # 64 bytes


def b64(data: bytes) -> str:
    """Unpadded base64url, as in a compact JWS."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def with_member(document: Mapping[str, Any], member: str) -> bytes:
    """The JSON of `document` with one more raw member appended, e.g. a second `"sub": "x"`."""
    return (json.dumps(document)[:-1] + ", " + member + "}").encode()


def public_pem(private_key: Any) -> str:
    """The SubjectPublicKeyInfo PEM of a private key's public half."""
    return str(
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def public_jwk(
    private_key: Any, *, kid: str, alg: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The public JWK of a private key, as a JWKS would publish it."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    jwk.update(extra)
    return dict(jwk)


@dataclass(frozen=True)
class Keys:
    """Private keys generated once per test session."""

    rsa: RSAPrivateKey
    rsa2: RSAPrivateKey
    ec: EllipticCurvePrivateKey
    ec2: EllipticCurvePrivateKey
    ed: Ed25519PrivateKey


def generate_keys() -> Keys:
    """Fresh keys of every family the verifier supports."""
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa2=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        ec2=ec.generate_private_key(ec.SECP256R1()),
        ed=ed25519.Ed25519PrivateKey.generate(),
    )


@dataclass
class Minter:
    """Signs tokens relative to a manual clock and remembers every one (for the log check)."""

    clock: ManualClock
    issued: list[str] = field(default_factory=list)

    def claims(
        self,
        extra: Mapping[str, Any] | None = None,
        drop: Iterable[str] = (),
        lifetime: float = 300,
    ) -> dict[str, Any]:
        """Default claims (iss, sub, iat, exp) with additions and removals."""
        now = int(self.clock.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "dev1",
            "iat": now,
            "exp": now + int(lifetime),
        }
        claims.update(extra or {})
        for name in drop:
            claims.pop(name, None)
        return claims

    def sign(
        self,
        key: Any,
        alg: str = "HS256",
        *,
        claims: Mapping[str, Any] | None = None,
        drop: Iterable[str] = (),
        lifetime: float = 300,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A token signed by PyJWT with this key and algorithm."""
        token = jwt.encode(
            self.claims(claims, drop, lifetime), key, algorithm=alg, headers=dict(headers or {})
        )
        return self.remember(token)

    def forge(
        self,
        header: Mapping[str, Any] | bytes,
        payload: Mapping[str, Any] | bytes,
        signer: Callable[[bytes], bytes] | None = None,
        signature: str | None = None,
    ) -> str:
        """A token built by hand, for what PyJWT refuses to produce (raw bytes: any JSON)."""
        head = header if isinstance(header, bytes) else json.dumps(header).encode()
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        signing_input = f"{b64(head)}.{b64(body)}"
        if signature is None:
            signature = b64(signer(signing_input.encode())) if signer else ""
        return self.remember(f"{signing_input}.{signature}")

    def remember(self, token: str) -> str:
        """Record a token so the teardown can assert it never reached a log line."""
        self.issued.append(token)
        return token
