"""JWT verification with keys from settings or a JWKS, and a cache of tokens already verified."""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import math
import re
import sys
from hashlib import sha256
from typing import Any

import aiohttp

from authserver import background
from authserver.bounded import ExpiringMap, weigh_str, weight
from authserver.clock import Clock, SystemClock
from authserver.errors import InvalidToken
from authserver.identity.jwks import JWKSSource
from authserver.identity.keys import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    VerificationKey,
    static_keys,
)
from authserver.identity.model import Claims, Identity, JWTSettings, invalid_token
from authserver.jsonkeys import RepeatedKey, unique_members

log = logging.getLogger(__name__)

# Compact JWS: three unpadded base64url segments (RFC 7515 section 7.1); checked before decoding.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_HEADER_CACHE_SIZE = 256
# Distinct sets of claim names whose position tables are shared (JWTs of one issuer have a
# handful); past this the table starts over (identities keep the tables they were given).
_NAME_TABLES_SIZE = 256
# What a remembered JWT costs beyond what `weight` counts of its claims: the map's slot, the
# digest, the identity (calibrated with tracemalloc, tests/test_bounded.py).
VERIFIED_OVERHEAD = 290
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")


def bearer_token(authorization_header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; InvalidToken when absent or bad."""
    if authorization_header is None or not authorization_header.strip():
        raise InvalidToken(
            "the request has no Authorization header",
            headers={"WWW-Authenticate": "Bearer"},
        )
    match = _BEARER.fullmatch(authorization_header.strip())
    if match is None:
        raise invalid_token("the Authorization header is not 'Bearer <token>'")
    return match.group(1)


def _verified_until(identity: Identity) -> float:
    return identity.expires_at


def _verified_weight(_digest: bytes, identity: Identity) -> int:
    # `weight(identity.claims)`, without walking a Mapping's views: asked of every JWT put in
    # the cache and of every one it evicts (7 of the 30 us a new JWT cost to verify).
    # The usual values (strings and ints) are weighed here, as `weight` would, without a call.
    claims = identity.claims
    values = claims.value_tuple if type(claims) is Claims else claims.values()
    total = VERIFIED_OVERHEAD + 64
    for value in values:
        kind = type(value)
        if kind is str:
            total += 16 + weigh_str(value)
        elif kind is int:
            total += 48
        else:
            total += 16 + weight(value)
    return total


_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The unused low bits of a segment's last character must be zero (4 bits when the length is
# 2 mod 4, 2 bits when 3 mod 4); otherwise several spellings would decode to the same bytes.
_STRAY_BITS = {2: 0x0F, 3: 0x03}
_SIXBIT = {char: value for value, char in enumerate(_ALPHABET)}


def _b64decode(segment: str, what: str) -> bytes:
    """Decode an unpadded base64url segment already known to hold only its alphabet."""
    tail = len(segment) % 4
    if tail == 1:
        raise invalid_token(f"the token {what} is not base64url")
    if tail and _SIXBIT[segment[-1]] & _STRAY_BITS[tail]:
        raise invalid_token(f"the token {what} is not canonical base64url")
    standard = segment.encode("ascii").translate(_TO_STANDARD_ALPHABET)
    return binascii.a2b_base64(standard + b"=" * (-len(segment) % 4))


# Levels of objects and arrays a header or claims set may nest. Every layer that keys on the
# claims (the policy's claims key, the answer cache's weights) walks them recursively: a 900-byte
# JWT nesting 250 lists deep was a 500 there, so such a token is refused here, once.
MAX_NESTING = 16


def _nests_too_deep(value: object) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_NESTING:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


# One decoder for every token: json.loads with a hook builds a new one per call (2.7 of the
# 5.9 us a claims set took to decode).
_DECODER = json.JSONDecoder(object_pairs_hook=unique_members)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        # RFC 7515 and 7519 section 4: names in a JOSE header or a claims set are unique. A
        # token read differently by its issuer and by us (a first and a last `sub`) is refused.
        text = data.decode("utf-8")
        value = _DECODER.decode(text)
    except RepeatedKey:
        raise invalid_token(f"the token {what} names the same member twice") from None
    except (ValueError, RecursionError):
        raise invalid_token(f"the token {what} is not JSON") from None
    if not isinstance(value, dict):
        raise invalid_token(f"the token {what} is not a JSON object")
    # A text with one '{' and no '[' holds no nested container (a bracket inside a string only
    # sends it to the full walk): the usual flat claims set skips it.
    if ("[" in text or text.count("{") > 1) and _nests_too_deep(value):
        raise invalid_token(f"the token {what} nests deeper than {MAX_NESTING} levels")
    if "\\u" in text and _holds_lone_surrogate(value):
        raise invalid_token(f"the token {what} holds a lone surrogate (\\ud800 to \\udfff)")
    return value


def _holds_lone_surrogate(value: object) -> bool:
    """Whether a name or string in `value` holds a surrogate no pair completes.

    Valid JSON, but no Unicode text: a layer that writes a claim out as UTF-8 (the Redis
    store's records and their claim marks) failed on it with a 500. Strict UTF-8 refuses
    encoded surrogates, so only a `\\u` escape brings one: the caller looks only then.
    """
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Ints below this in magnitude convert to a finite float: a date claim that is one needs
# none of the checks below (a larger one may still overflow and is refused there).
_PLAIN_INT = 1 << 62
# The claims whose values every token of one issuer shares (see JWTVerifier._compact).
_SHARED_CLAIMS = ("iss", "aud")


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """The claim as a number: the claim's own int object when it is one (kept, not copied)."""
    value = claims.get(name)
    if value is None:
        return None
    if type(value) is int and -_PLAIN_INT < value < _PLAIN_INT:
        return value  # the usual case: finite, in range, kept as it is (see below)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_token(f"the '{name}' claim is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise invalid_token(f"the '{name}' claim is out of range") from None
    if not math.isfinite(number):
        raise invalid_token(f"the '{name}' claim is out of range")
    # An identity remembered for every JWT holds its `exp` and `iat`: the claims' own ints
    # rather than float copies (48 bytes a JWT).
    return value if value.__class__ is int else number


class JWTVerifier:
    """Verifies bearer JWTs against the configured keys; remembers tokens it has verified."""

    def __init__(
        self,
        settings: JWTSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Prepare keys from settings; ValueError names every setting that cannot work."""
        self._settings = settings
        self._clock: Clock = clock or SystemClock()
        self._algorithms = frozenset(settings.algorithms)
        self._leeway = settings.leeway
        self._max_token_bytes = settings.max_token_bytes
        self._session = session
        self._owned_session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        # Least-recently-used, keyed by sha256(token): 32 bytes a key whatever the token size;
        # bounded by entries and by bytes (a fleet of 8 KB JWTs fills the bytes first).
        self._cache: ExpiringMap[bytes, Identity] = ExpiringMap(
            max(settings.cache_size, 0),
            _verified_until,
            max_bytes=settings.cache_bytes,
            weigh=_verified_weight,
            touch=True,
        )
        self._headers: dict[str, tuple[str, str | None]] = {}
        # The token `remembered` last did not know, and its digest.
        self._missed: tuple[str, bytes] | None = None
        self._name_tables: dict[tuple[str, ...], dict[str, int]] = {}
        # Claim values every token of this issuer carries, as one object each (see below).
        self._shared: dict[str, str] = {
            value: value for value in (settings.issuer, settings.audience) if value
        }
        # Bumped whenever remembered tokens are dropped for a reason other than their own
        # expiry (a key left the JWKS): whoever keeps identities of its own (the
        # repeat answers) compares it before trusting one.
        self.epoch = 0
        # The `jwt` cache layer in /metrics: tokens found remembered, and tokens verified in
        # full (never seen, forgotten or expired; invalid ones too).
        self.hits = 0
        self.misses = 0

        self._static, problems = static_keys(
            settings.algorithms, settings.secret, settings.public_key_pem
        )
        if not settings.algorithms:
            problems.append("no JWT algorithm is configured")
        if not settings.issuer:
            # Subjects are unique only within one issuer; see JWTSettings.
            problems.append("no JWT issuer is configured")
        for alg in settings.algorithms:
            if alg in self._static:
                continue
            if alg in HMAC_ALGORITHMS:
                problems.append(f"{alg} needs a secret")
            elif alg in ASYMMETRIC_ALGORITHMS and settings.jwks_url is None:
                problems.append(f"{alg} needs a fitting PEM public key or a JWKS URL")
        if problems:
            raise ValueError("JWT settings cannot work: " + "; ".join(problems))

        self._jwks: JWKSSource | None = None
        if settings.jwks_url is not None:
            self._jwks = JWKSSource(
                settings.jwks_url,
                [alg for alg in settings.algorithms if alg not in self._static],
                session=self._client_session,
                clock=self._clock,
                refresh_interval=settings.jwks_refresh_interval,
                cache_ttl=settings.jwks_cache_ttl,
                on_removed=self._drop_keys,
            )

    @property
    def ready(self) -> bool:
        """Whether tokens can be verified: always, unless a JWKS has never loaded."""
        return self._jwks is None or self._jwks.ready

    @property
    def jwks(self) -> JWKSSource | None:
        """The JWKS source, when one is configured (for readiness detail and tests)."""
        return self._jwks

    @property
    def cached(self) -> int:
        """Number of verified tokens currently remembered."""
        return len(self._cache)

    async def start(self) -> None:
        """Load the JWKS once (a failure is logged, not raised), then keep it fresh in a task."""
        if self._jwks is None or self._task is not None:
            return
        await self._jwks.refresh(rate_limited=False)
        self._task = asyncio.create_task(self._jwks.run(), name="jwks-refresh")

    async def close(self) -> None:
        """Stop the background refresh and close the session if this verifier made it."""
        task, self._task = self._task, None
        await background.stop([task])
        if self._jwks is not None:
            await self._jwks.close()
        if self._owned_session is not None:
            await self._owned_session.close()
            self._owned_session = None

    def remembered(self, token: str) -> Identity | None:
        """The identity of a token verified before and not expired since; else None.

        The hot path's check, without a coroutine: a token seen before costs a hash and a
        dict lookup. None says nothing about validity; `verify` then decides.
        """
        if len(token) > self._max_token_bytes or not token.isascii():
            return None
        digest = sha256(token.encode("ascii")).digest()
        hit = self._cache.get(digest, self._clock.time())
        if hit is not None:
            self.hits += 1
            return hit
        # `verify` comes next (it drops an expired one and counts the miss): it need not
        # hash the token again.
        self._missed = (token, digest)
        return None

    def _recall(self, digest: bytes) -> Identity | None:
        # A remembered token is served only until its exp; the leeway is granted by the
        # full check in `verify`, so the cache never stretches a token's life.
        return self._cache.get(digest, self._clock.time())

    async def verify(self, token: str) -> Identity:
        """Verify a compact JWT and return its identity; InvalidToken says precisely why not."""
        # Size first: nothing about an oversized token is parsed, hashed or logged.
        if len(token) > self._max_token_bytes:
            log.debug("JWT refused: %d characters is over the limit", len(token))
            raise invalid_token(f"the token is larger than {self._max_token_bytes} bytes")
        if not token.isascii():
            raise invalid_token("the token is not ASCII")
        missed, self._missed = self._missed, None
        if missed is not None and missed[0] == token:
            digest = missed[1]
        else:
            digest = sha256(token.encode("ascii")).digest()
        known = self._recall(digest)
        if known is not None:
            self.hits += 1
            return known
        self.misses += 1
        fp = digest.hex()[:8]
        try:
            identity = await self._verify_uncached(token, fp)
        except InvalidToken as err:
            log.debug("JWT %s refused: %s", fp, err.detail)
            raise
        self._remember(digest, identity)
        log.debug("JWT %s verified (key %s)", fp, identity.key_ref)
        return identity

    async def _verify_uncached(self, token: str, fp: str) -> Identity:
        if _COMPACT_JWS.fullmatch(token) is None:
            if token.count(".") != 2:
                raise invalid_token("the token does not have three dot-separated segments")
            raise invalid_token("the token has an empty or non-base64url segment")
        header_b64, payload_b64, signature_b64 = token.split(".")
        alg, kid = self._header(header_b64)
        key = self._static.get(alg)
        if key is None:
            assert self._jwks is not None  # __init__ refuses an algorithm without a key source
            key = await self._jwks.key_for(alg, kid)
        signature = _b64decode(signature_b64, "signature")
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
        if not self._check_signature(key, signing_input, signature):
            raise invalid_token("the token signature does not verify")
        claims = _json_object(_b64decode(payload_b64, "payload"), "payload")
        return self._identity(claims, fp, key.ref)

    def _header(self, header_b64: str) -> tuple[str, str | None]:
        """The accepted (alg, kid) of a header segment; most tokens share a handful of them."""
        known = self._headers.get(header_b64)
        if known is not None:
            return known
        header = _json_object(_b64decode(header_b64, "header"), "header")
        # The algorithm allow-list comes from settings and is checked before any key is chosen.
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise invalid_token("the token's algorithm is not accepted")
        if "crit" in header:
            raise invalid_token("the token has a crit header; no extension is supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise invalid_token("the token's key id (kid) is not a string")
        # jku, x5u, jwk and x5c are never read: keys come only from settings or the JWKS URL.
        if len(self._headers) >= _HEADER_CACHE_SIZE:
            self._headers.clear()
        self._headers[header_b64] = (alg, kid)
        return alg, kid

    def _check_signature(self, key: VerificationKey, signing_input: bytes, sig: bytes) -> bool:
        """The expensive step; a seam that tests count to prove the cache skips it."""
        return key.verify(signing_input, sig)

    def _identity(self, claims: dict[str, Any], fp: str, key_ref: str) -> Identity:
        settings = self._settings
        now = self._clock.time()
        leeway = self._leeway
        # Time claims are checked against the injected clock (not PyJWT's time.time()), so the
        # verifier, its cache and the tests agree on "now".
        expires_at = _numeric_date(claims, "exp")
        if expires_at is None:
            raise invalid_token("the token has no 'exp' claim")
        if expires_at <= now - leeway:
            raise invalid_token("the token has expired")
        not_before = _numeric_date(claims, "nbf")
        if not_before is not None and not_before > now + leeway:
            raise invalid_token("the token is not valid yet (nbf)")
        issued_at = _numeric_date(claims, "iat")
        if issued_at is not None and issued_at > now + leeway:
            raise invalid_token("the token was issued in the future (iat)")
        max_age = settings.max_age
        if max_age is not None:
            if issued_at is None:
                raise invalid_token("the token has no 'iat' claim (a maximum age is configured)")
            if issued_at + max_age <= now - leeway:
                raise invalid_token(f"the token is older than {max_age:g} s (iat)")
            # Remembered tokens and repeats are served until expires_at: age ends them too.
            expires_at = min(expires_at, issued_at + max_age)

        issuer = claims.get("iss")
        if issuer is None:
            raise invalid_token("the token has no 'iss' claim")
        if issuer != settings.issuer:
            raise invalid_token("the token's issuer is not accepted")
        audience = claims.get("aud")
        if settings.audience is not None:
            if audience is None:
                raise invalid_token("the token has no 'aud' claim")
            audiences = [audience] if isinstance(audience, str) else audience
            if not isinstance(audiences, list) or settings.audience not in audiences:
                raise invalid_token("the token's audience is not accepted")
        elif audience is not None:
            # RFC 7519 section 4.1.3: a token meant for a named audience is not for us
            # unless we are configured as that audience.
            raise invalid_token("the token names an audience but none is configured")

        name = settings.subject_claim
        subject = claims.get(name)
        if subject is None:
            raise invalid_token(f"the token has no '{name}' claim")
        if not isinstance(subject, str) or not subject:
            raise invalid_token(f"the '{name}' claim is not a non-empty string")
        return Identity(
            subject=subject,
            claims=self._compact(claims),
            issued_at=issued_at,
            expires_at=expires_at,
            fingerprint=fp,
            key_ref=key_ref,
        )

    def _compact(self, claims: dict[str, Any]) -> Claims:
        """The claims as a Claims: their values, and a name table shared by equal name sets.

        Up to 100k identities stay cached; claim names are the same few strings in all of
        them (interned once, in the table), and so are the issuer's and audience's values:
        the checked claims' values are swapped for the settings' own objects.
        """
        names = tuple(claims)
        table = self._name_tables.get(names)
        if table is None:
            if len(self._name_tables) >= _NAME_TABLES_SIZE:
                self._name_tables.clear()
            table = {sys.intern(name): at for at, name in enumerate(names)}
            self._name_tables[tuple(table)] = table
        values = list(claims.values())
        shared = self._shared
        for name in _SHARED_CLAIMS:
            at = table.get(name)
            if at is not None:
                value = values[at]
                if type(value) is str:
                    values[at] = shared.get(value, value)
        return Claims(table, tuple(values))

    def _remember(self, digest: bytes, identity: Identity) -> None:
        self._cache.put(digest, identity, self._clock.time())

    def _drop_keys(self, refs: frozenset[str]) -> None:
        self.epoch += 1
        doomed = [k for k, v in self._cache.items(-math.inf) if v.key_ref in refs]
        for digest in doomed:
            self._cache.pop(digest)
        if doomed:
            log.info(
                "dropped %d verified token(s) signed by keys no longer in the JWKS", len(doomed)
            )

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        if self._owned_session is None:
            self._owned_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10), cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._owned_session
