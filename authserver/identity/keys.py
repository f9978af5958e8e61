"""Verification keys: which algorithm a key may verify, loaded from settings or from a JWKS."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ec import (
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey, Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

log = logging.getLogger(__name__)

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_CURVES) | {"EdDSA"}
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS

STATIC_KEY_REF = "static"


# The digests of the algorithms checked directly rather than through PyJWT's Algorithm.
_HMAC_DIGESTS = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
_PKCS1_HASHES: dict[str, hashes.HashAlgorithm] = {
    "RS256": hashes.SHA256(),
    "RS384": hashes.SHA384(),
    "RS512": hashes.SHA512(),
}


def _direct_check(alg: str, key: Any) -> Callable[[bytes, bytes], bool] | None:
    """A check of (signing input, signature) for HS* and RS*, without PyJWT's per-call work.

    PyJWT's HMAC verify builds and keys an `hmac.HMAC` object a call, and its RSA verify
    makes new padding and hash objects a call. The MAC is still compared in constant time
    (`hmac.compare_digest`), the RSA signature still verified by `cryptography`.
    """
    if alg in _HMAC_DIGESTS and isinstance(key, bytes):
        # Keyed once: a copy of the keyed state costs 1.2 us where hmac.digest, which looks
        # the digest up in OpenSSL 3 and keys it again on every call, cost 1.9.
        keyed = hmac.new(key, digestmod=_HMAC_DIGESTS[alg])

        def check_hmac(signing_input: bytes, signature: bytes) -> bool:
            mac = keyed.copy()
            mac.update(signing_input)
            return hmac.compare_digest(mac.digest(), signature)

        return check_hmac
    if alg in _PKCS1_HASHES and isinstance(key, RSAPublicKey):
        pkcs1, hash_alg = padding.PKCS1v15(), _PKCS1_HASHES[alg]

        def check_rsa(signing_input: bytes, signature: bytes) -> bool:
            try:
                key.verify(signature, signing_input, pkcs1, hash_alg)
            except InvalidSignature:
                return False
            return True

        return check_rsa
    return None


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A prepared key bound to exactly one algorithm; `ref` names the key material."""

    alg: str
    algorithm: Algorithm
    key: Any
    kid: str | None
    ref: str
    # HS* and RS*: checked without PyJWT (see _direct_check); the others through `algorithm`.
    _direct: Callable[[bytes, bytes], bool] | None = field(
        init=False, default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        """Prepare the direct check of the key's algorithm, when it has one."""
        object.__setattr__(self, "_direct", _direct_check(self.alg, self.key))

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """Check a signature with this key and its one algorithm."""
        direct = self._direct
        if direct is not None:
            return direct(signing_input, signature)
        return bool(self.algorithm.verify(signing_input, self.key, signature))


def algorithm(alg: str) -> Algorithm:
    """PyJWT's implementation of one of the supported algorithms."""
    if alg not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"unsupported JWT algorithm {alg!r}")
    return get_default_algorithms()[alg]


def key_fits(alg: str, key: object) -> bool:
    """Whether an asymmetric public key is of the family and curve the algorithm needs."""
    if alg in RSA_ALGORITHMS:
        return isinstance(key, RSAPublicKey)
    if alg in EC_CURVES:
        return isinstance(key, EllipticCurvePublicKey) and key.curve.name == EC_CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, Ed25519PublicKey | Ed448PublicKey)
    return False


def _public(key: object) -> object:
    # A JWKS that carries private parameters still only ever verifies here.
    if isinstance(
        key, RSAPrivateKey | EllipticCurvePrivateKey | Ed25519PrivateKey | Ed448PrivateKey
    ):
        return key.public_key()
    return key


def static_keys(
    algorithms: Iterable[str], secret: str | None, public_key_pem: str | None
) -> tuple[dict[str, VerificationKey], list[str]]:
    """Keys from settings, one per algorithm they can serve, and the problems found."""
    problems: list[str] = []
    keys: dict[str, VerificationKey] = {}
    public_key: object = None
    if public_key_pem is not None:
        try:
            public_key = load_pem_public_key(public_key_pem.encode())
        except (ValueError, TypeError) as err:
            problems.append(f"the public key is not a usable PEM public key ({err})")
    for alg in algorithms:
        try:
            impl = algorithm(alg)
        except ValueError as err:
            problems.append(str(err))
            continue
        if alg in HMAC_ALGORITHMS:
            if secret is None:
                continue
            try:
                prepared = impl.prepare_key(secret)
            except PyJWTError as err:
                problems.append(f"{alg}: the secret cannot be used ({err})")
                continue
        elif public_key is not None and key_fits(alg, public_key):
            prepared = public_key
        else:
            continue
        too_short = impl.check_key_length(prepared)
        if too_short:
            problems.append(f"{alg}: {too_short}")
            continue
        keys[alg] = VerificationKey(alg, impl, prepared, None, STATIC_KEY_REF)
    return keys, problems


def _ref(jwk: Mapping[str, Any]) -> str:
    canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":"), default=str)
    return "jwk:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def keys_from_jwks(document: object, algorithms: Iterable[str]) -> list[VerificationKey]:
    """Usable signature keys of a JWKS document for the configured asymmetric algorithms."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("the JWKS is not a JSON object with a 'keys' list")
    wanted = [alg for alg in algorithms if alg in ASYMMETRIC_ALGORITHMS]
    found: list[VerificationKey] = []
    for position, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        label = f"key {position} (kid {str(kid)[:64]!r})"
        if kid is not None and not isinstance(kid, str):
            log.warning("JWKS %s ignored: kid is not a string", label)
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if isinstance(ops, list) and "verify" not in ops:
            continue
        if jwk.get("kty") == "oct":
            # A shared secret published at a URL is no secret; never trust one.
            log.warning("JWKS %s ignored: symmetric keys are not accepted from a JWKS", label)
            continue
        declared = jwk.get("alg")
        candidates = [declared] if declared is not None else wanted
        ref = _ref(jwk)
        for alg in candidates:
            if alg not in wanted:
                continue
            try:
                key = _public(PyJWK.from_dict(jwk, algorithm=alg).key)
            except (PyJWTError, ValueError, TypeError):
                continue
            impl = algorithm(alg)
            if not key_fits(alg, key):
                continue
            too_short = impl.check_key_length(key)
            if too_short:
                log.warning("JWKS %s ignored for %s: %s", label, alg, too_short)
                continue
            found.append(VerificationKey(alg, impl, key, kid, ref))
    return found


class KeySet:
    """An immutable, indexed set of JWKS keys: by (kid, alg), and the kid-less fallback."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        """Index the keys; the first key for a (kid, alg) wins."""
        self.keys = tuple(keys)
        self._by_kid: dict[tuple[str | None, str], VerificationKey] = {}
        by_alg: dict[str, list[VerificationKey]] = {}
        for key in self.keys:
            self._by_kid.setdefault((key.kid, key.alg), key)
            by_alg.setdefault(key.alg, []).append(key)
        self._only: dict[str, VerificationKey] = {
            alg: keys[0] for alg, keys in by_alg.items() if len(keys) == 1
        }
        self.kids = frozenset(key.kid for key in self.keys if key.kid is not None)
        self.refs = frozenset(key.ref for key in self.keys)

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The key for this kid and algorithm; a token without kid needs a single candidate."""
        if kid is None:
            return self._only.get(alg)
        return self._by_kid.get((kid, alg))

    def __len__(self) -> int:
        """Number of (key, algorithm) pairs."""
        return len(self.keys)
