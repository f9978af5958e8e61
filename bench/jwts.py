"""Device JWTs for the benchmark: HS256, signed with the secret the benchmark gateway trusts."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import jwt

SECRET = "bench-secret-that-is-long-enough-for-hs256!"
ISSUER = "https://app.bench.test"
AUDIENCE = "mqtt-gateway"


def subjects(prefix: str, count: int) -> list[str]:
    """`count` subject names, `<prefix>-000000` upwards (fixed width, so answers stay one size)."""
    return [f"{prefix}-{i:06d}" for i in range(count)]


def make_jwts(
    names: Iterable[str],
    *,
    tag: str,
    lifetime: float = 24 * 3600,
    now: float | None = None,
    secret: str = SECRET,
) -> list[str]:
    """One JWT per subject in `names`; `tag` makes each `jti` (and so each JWT) new."""
    issued = int(time.time() if now is None else now)
    return [
        jwt.encode(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": name,
                "iat": issued,
                "exp": int(issued + lifetime),
                "jti": f"{tag}-{i}",
            },
            secret,
            algorithm="HS256",
        )
        for i, name in enumerate(names)
    ]


def write_jwt_file(path: Path, tokens: Iterable[str], bodies: Iterable[str] | None = None) -> Path:
    """Write one JWT per line, the format bench/rotate.lua reads; a tab then its body if any."""
    if bodies is None:
        path.write_text("".join(f"{t}\n" for t in tokens))
    else:
        path.write_text("".join(f"{t}\t{b}\n" for t, b in zip(tokens, bodies, strict=True)))
    return path


def client_id_bodies(names: Iterable[str]) -> list[str]:
    """The body most devices send, `{"clientId": ...}`, one per subject in `names`."""
    return [f'{{"clientId": "GID_bench@@@{name}"}}' for name in names]


def read_jwt_file(path: Path) -> list[str]:
    """The JWTs of a file written by write_jwt_file (without their bodies)."""
    return [line.split("\t", 1)[0] for line in path.read_text().splitlines() if line]
