"""Vendor OpenAPI credentials (AccessKey pair, optional STS token) read from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ENV_ACCESS_KEY_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"  # noqa: S105 - a variable name
ENV_SECURITY_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"  # noqa: S105 - a variable name


@dataclass(frozen=True)
class Credentials:
    """What signs every call: the AccessKey pair and, for STS credentials, the token."""

    access_key_id: str
    access_key_secret: str
    security_token: str | None = None

    def __repr__(self) -> str:
        """Show the key id (devices see it anyway), never the secret or the token."""
        token = "set" if self.security_token else "none"
        return f"Credentials(access_key_id={self.access_key_id!r}, secret=***, sts_token={token})"


def credentials_from_env(environ: Mapping[str, str]) -> tuple[Credentials | None, list[str]]:
    """Credentials from the vendor's conventional variables, and every problem found."""
    key_id = environ.get(ENV_ACCESS_KEY_ID, "").strip()
    secret = environ.get(ENV_ACCESS_KEY_SECRET, "").strip()
    token = environ.get(ENV_SECURITY_TOKEN, "").strip() or None
    problems: list[str] = []
    if not key_id:
        problems.append(f"{ENV_ACCESS_KEY_ID} is not set")
    if not secret:
        problems.append(f"{ENV_ACCESS_KEY_SECRET} is not set")
    if problems:
        if token is not None:
            problems.append(f"{ENV_SECURITY_TOKEN} is set without a complete AccessKey pair")
        return None, problems
    return Credentials(key_id, secret, token), problems
