"""Admin authentication and audit: `guarded` wraps every /v1/admin/ handler and records it.

An admin is either a JWT from the configured issuer whose ``scope`` (separated by ASCII spaces) or
``roles`` (list of strings) holds the admin scope, or a static API key whose sha256 is listed
in the API key file. Every request under the prefix, answered or refused, writes exactly one
JSON line on the ``authserver.audit`` logger; handlers add what they touched (subject,
clientId, token fingerprints) to the request's audit record, never a token value.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from authserver import appkeys
from authserver.errors import Forbidden, GatewayError, InvalidToken
from authserver.fingerprint import fingerprint
from authserver.identity import Identity, bearer_token

ADMIN_PREFIX = "/v1/admin/"
AUDIT_LOGGER = "authserver.audit"
API_KEY_HEADER = "X-API-Key"
# Every admin 401 names both ways in: a bearer JWT and an API key.
ADMIN_CHALLENGE = 'Bearer realm="authserver-admin", ApiKey realm="authserver-admin"'
MAX_API_KEY_CHARS = 512

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_APIKEY_SCHEME = re.compile(r"[Aa][Pp][Ii][Kk][Ee][Yy] +(\S+) *")

audit_log = logging.getLogger(AUDIT_LOGGER)


class ApiKeysFileError(Exception):
    """The admin API key file cannot be used; `problems` names every bad line."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"admin API key file {path}:\n  - " + "\n  - ".join(problems))
        self.path = path
        self.problems = problems


class AdminScopeRequired(Forbidden):
    """A valid JWT that does not carry the admin scope or role."""

    code = "admin_scope_required"
    title = "Admin scope required"
    actor: AdminActor | None = None  # who was refused, for the audit line


class ApiKeys:
    """The sha256 hashes of the accepted admin API keys, checked in constant time."""

    def __init__(self, hashes: Iterable[str]) -> None:
        """Keep the hashes as bytes for `hmac.compare_digest`."""
        self._hashes = tuple(h.encode("ascii") for h in hashes)

    def __len__(self) -> int:
        """How many keys are accepted."""
        return len(self._hashes)

    @classmethod
    def parse(cls, text: str, path: Path) -> ApiKeys:
        """Read one lowercase sha256 hex per line; `#` comments and blank lines are skipped."""
        hashes: list[str] = []
        problems: list[str] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            candidate = line.lower()
            if not _SHA256_HEX.fullmatch(candidate):
                problems.append(
                    f"line {number}: expected the 64 hex digits of a sha256 "
                    f"(found {len(line)} characters); see README 'Admin'"
                )
                continue
            if candidate in hashes:
                problems.append(f"line {number}: the same hash is listed twice")
                continue
            hashes.append(candidate)
        if problems:
            raise ApiKeysFileError(path, problems)
        return cls(hashes)

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        """Read and parse the file at start-up; ApiKeysFileError on any problem."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ApiKeysFileError(path, [f"cannot be read: {err}"]) from err
        return cls.parse(text, path)

    def matches(self, key: str) -> bool:
        """Whether `key` is one of ours: every stored hash is compared, whatever matched."""
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest().encode()
        found = False
        for stored in self._hashes:
            found |= hmac.compare_digest(presented, stored)
        return found


@dataclass(frozen=True)
class AdminActor:
    """Who is acting: a JWT subject, or `apikey:<fingerprint>` for an API key."""

    name: str
    via: str  # "jwt" or "apikey"


API_KEYS = web.AppKey("admin_api_keys", ApiKeys)
ACTOR = web.RequestKey("admin_actor", AdminActor)
AUDIT = web.RequestKey("admin_audit", dict[str, Any])


def load_api_keys(app: web.Application) -> None:
    """Load the configured API key file into the app (at creation, never per request)."""
    path = app[appkeys.SETTINGS].admin_api_keys_file
    if path is not None:
        app[API_KEYS] = ApiKeys.load(path)


def unauthenticated(detail: str) -> InvalidToken:
    """A 401 for the admin API, with both challenges."""
    return InvalidToken(detail, headers={"WWW-Authenticate": ADMIN_CHALLENGE})


def has_admin_scope(claims: Mapping[str, Any], scope: str) -> bool:
    """Whether the `scope` string or the `roles` list of the claims holds `scope`."""
    scopes = claims.get("scope")
    # RFC 6749 section 3.3: scope tokens are separated by %x20 only. str.split() would also
    # cut at a tab or a no-break space, making "authserver:admin\u00a0read" hold the admin scope.
    if isinstance(scopes, str) and scope in scopes.split(" "):
        return True
    roles = claims.get("roles")
    return isinstance(roles, list) and any(r == scope for r in roles if isinstance(r, str))


def _presented_api_key(request: web.Request) -> str | None:
    header = request.headers.get(API_KEY_HEADER)
    if header is not None:
        return header.strip()
    authorization = request.headers.get("Authorization", "").strip()
    match = _APIKEY_SCHEME.fullmatch(authorization)
    if match is not None:
        return match.group(1)
    if authorization[:7].lower() == "apikey ":
        return ""
    return None


async def authenticate_admin(request: web.Request) -> AdminActor:
    """The admin behind a request; InvalidToken (401) or AdminScopeRequired (403) if none."""
    key = _presented_api_key(request)
    if key is not None:
        api_keys = request.app.get(API_KEYS)
        if api_keys is None:
            raise unauthenticated("API keys are not enabled (AUTHSERVER_ADMIN_API_KEYS_FILE)")
        if not key or len(key) > MAX_API_KEY_CHARS or not api_keys.matches(key):
            raise unauthenticated("the API key is not valid")
        return AdminActor(f"apikey:{fingerprint(key)}", "apikey")
    try:
        token = bearer_token(request.headers.get("Authorization"))
        identity: Identity = await request.app[appkeys.VERIFIER].verify(token)
    except InvalidToken as err:
        raise unauthenticated(err.detail) from err
    actor = AdminActor(identity.subject, "jwt")
    scope = request.app[appkeys.SETTINGS].admin_scope
    if not has_admin_scope(identity.claims, scope):
        refused = AdminScopeRequired(
            f"the token's scope or roles claim does not include {scope!r}",
            extra={"requiredScope": scope},
        )
        refused.actor = actor
        raise refused
    return actor


def _action(request: web.Request) -> str:
    route = request.match_info.route
    name = route.name if route is not None else None
    return name.removeprefix("admin.") if name else "unmatched"


def write_audit(record: Mapping[str, Any]) -> None:
    """One JSON line on the audit logger; the record is also attached as `extra['audit']`."""
    audit_log.info(
        json.dumps(record, ensure_ascii=False, sort_keys=True, default=str),
        extra={"audit": dict(record)},
    )


def guarded(handler: Handler) -> Handler:
    """`handler` behind admin authentication, writing the request's one audit line.

    `setup_admin_routes` registers every admin handler through this, and a catch-all under
    /v1/admin/ too, so an unknown admin path is a 401 before it is a 404. A route-walking
    test fails the suite for any /v1/admin/ route that is not guarded.
    """

    @functools.wraps(handler)
    async def admin_handler(request: web.Request) -> web.StreamResponse:
        record: dict[str, Any] = {"action": _action(request), "method": request.method}
        request[AUDIT] = record
        status = 500
        try:
            try:
                actor = await authenticate_admin(request)
            except AdminScopeRequired as refused:
                # The caller proved who they are: the audit line says who was refused.
                record["actor"] = refused.actor.name if refused.actor else None
                raise
            record["actor"] = actor.name
            request[ACTOR] = actor
            response = await handler(request)
            status = response.status
            return response
        except GatewayError as err:
            status = err.status
            record.setdefault("error", err.code)
            raise
        except web.HTTPException as err:
            status = err.status
            raise
        finally:
            record.setdefault("actor", None)
            record["result"] = status
            write_audit(record)

    return admin_handler
