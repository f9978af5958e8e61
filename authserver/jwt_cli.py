"""`authserver jwt`: mint a test HS256 JWT the way a gateway with the same variables accepts it.

For the demo and local runs against the emulator, where there is no real login service: it
reads the same variables as `authserver serve` (AUTHSERVER_JWT_SECRET, _ISSUER, _AUDIENCE,
_SUBJECT_CLAIM, _ALGORITHMS, AUTHSERVER_ADMIN_SCOPE), so a JWT it prints is one that gateway
verifies. The secret comes from the environment or a file, never from the command line, where
`ps` and the shell history would keep it. Only shared-secret (HS*) gateways: for a public key
or a JWKS, the private key belongs to the real issuer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
DEFAULT_ADMIN_SCOPE = "authserver:admin"


class _UsageError(Exception):
    """A problem with the arguments or the environment (exit 2)."""


def mint(
    secret: str,
    issuer: str,
    subject: str,
    *,
    lifetime: int = 3600,
    audience: str | None = None,
    subject_claim: str = "sub",
    algorithm: str = "HS256",
    claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A JWT for `subject` from `issuer`, issued now and valid `lifetime` seconds."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = dict(claims or {})
    payload.update({subject_claim: subject, "iss": issuer, "iat": issued})
    payload["exp"] = issued + lifetime
    if audience is not None:
        payload["aud"] = audience
    return jwt.encode(payload, secret, algorithm=algorithm)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authserver jwt",
        description="Print a test JWT signed with AUTHSERVER_JWT_SECRET (or --secret-file) for "
        "AUTHSERVER_JWT_ISSUER (or --issuer), the way `authserver serve` with the same "
        "variables verifies it. Local testing only: real JWTs come from your login service.",
    )
    parser.add_argument("--subject", required=True, help="the subject (the `sub` claim)")
    parser.add_argument(
        "--claims", default="{}", metavar="JSON", help='more claims, e.g. \'{"groups": ["ops"]}\''
    )
    parser.add_argument(
        "--admin",
        action="store_true",
        help="add scope=AUTHSERVER_ADMIN_SCOPE (default authserver:admin): an admin JWT",
    )
    parser.add_argument(
        "--lifetime", type=int, default=3600, help="seconds until exp (default %(default)s)"
    )
    parser.add_argument(
        "--secret-file", type=Path, help="file holding the secret (else AUTHSERVER_JWT_SECRET)"
    )
    parser.add_argument("--issuer", help="the `iss` (else AUTHSERVER_JWT_ISSUER)")
    parser.add_argument("--audience", help="the `aud` (else AUTHSERVER_JWT_AUDIENCE, if set)")
    return parser


def _secret(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    if args.secret_file is not None:
        try:
            secret = str(args.secret_file.read_text()).strip()
        except OSError as err:
            raise _UsageError(f"cannot read --secret-file: {err.strerror}") from err
    else:
        secret = env.get("AUTHSERVER_JWT_SECRET", "")
    if not secret:
        raise _UsageError("no secret: set AUTHSERVER_JWT_SECRET or pass --secret-file")
    return secret


def _algorithm(env: Mapping[str, str]) -> str:
    configured = [a.strip() for a in env.get("AUTHSERVER_JWT_ALGORITHMS", "HS256").split(",")]
    usable = [a for a in configured if a in HMAC_ALGORITHMS]
    if not usable:
        raise _UsageError(
            "AUTHSERVER_JWT_ALGORITHMS names no HS256/384/512: this command signs with a "
            "shared secret only"
        )
    return usable[0]


def _claims(text: str) -> dict[str, Any]:
    try:
        claims = json.loads(text)
    except ValueError as err:
        raise _UsageError(f"--claims is not JSON: {err}") from err
    if not isinstance(claims, dict):
        raise _UsageError("--claims must be a JSON object")
    return claims


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Print one JWT on stdout; exit 2 on a usage problem."""
    env = os.environ if environ is None else environ
    args = _parser().parse_args(list(argv))
    try:
        secret = _secret(args, env)
        issuer = args.issuer or env.get("AUTHSERVER_JWT_ISSUER")
        if not issuer:
            raise _UsageError("no issuer: set AUTHSERVER_JWT_ISSUER or pass --issuer")
        claims = _claims(args.claims)
        if args.admin:
            claims["scope"] = env.get("AUTHSERVER_ADMIN_SCOPE") or DEFAULT_ADMIN_SCOPE
        if args.lifetime < 1:
            raise _UsageError("--lifetime must be at least 1 second")
        token = mint(
            secret,
            issuer,
            args.subject,
            lifetime=args.lifetime,
            audience=args.audience or env.get("AUTHSERVER_JWT_AUDIENCE") or None,
            subject_claim=env.get("AUTHSERVER_JWT_SUBJECT_CLAIM") or "sub",
            algorithm=_algorithm(env),
            claims=claims,
        )
    except _UsageError as err:
        print(f"authserver jwt: {err}", file=sys.stderr)
        return 2
    print(token)
    return 0
