"""The admin API under /v1/admin/: revoke and query tokens, look up devices, explain the policy.

Every route here is registered through `admin_auth.guarded` (by `setup_admin_routes`), which
authenticates and writes the one audit line per request; handlers add what they touched to
`request[AUDIT]` (subjects, clientIds, token fingerprints, never values).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from cachetools import TTLCache

from authserver import appkeys
from authserver.cloud.errors import CloudRejected
from authserver.errors import BadRequest, GatewayError, NotConfigured, NotFound
from authserver.fingerprint import fingerprint
from authserver.policy.engine import allowed_client_ids, evaluate, explain, token_plan
from authserver.tokens.sharing import SHARED_SUBJECT
from authserver.web import shapes
from authserver.web.admin_auth import ADMIN_PREFIX, AUDIT, guarded, load_api_keys
from authserver.web.observe import observed
from authserver.web.request import json_body
from authserver.web.shapes import (
    DEFAULT_PAGE_SIZE,
    MAX_NEXT_TOKEN_CHARS,
    MAX_PAGE_NO,
    MAX_PAGE_SIZE,
    ClientId,
    GroupId,
    IotId,
    Subject,
    SubjectSegment,
    respond,
)

QUERY_CACHE_TTL = 5.0
QUERY_CACHE_SIZE = 10_000

QUERY_CACHE = web.AppKey("admin_query_cache", TTLCache[str, bool])


def _audit(request: web.Request, **fields: Any) -> None:
    request[AUDIT].update({k: v for k, v in fields.items() if v is not None})


def query_params(request: web.Request, allowed: Collection[str]) -> dict[str, str]:
    """The query string as a dict; refuses unknown and repeated parameters."""
    params = request.query
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s): {', '.join(unknown)}",
            extra={"unknownFields": unknown, "allowedFields": sorted(allowed)},
        )
    repeated = sorted(k for k in set(params) if len(params.getall(k)) > 1)
    if repeated:
        raise BadRequest(f"query parameter(s) given more than once: {', '.join(repeated)}")
    return {k: params[k] for k in params}


def _int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not lo <= int(raw) <= hi:
        raise BadRequest(
            f"{name} must be a whole number between {lo} and {hi}", extra={"field": name}
        )
    return int(raw)


# -- revocation ----------------------------------------------------------------------------


async def revoke(request: web.Request) -> web.Response:
    """Revoke one token, or every token of a subject, a clientId or a claim value; 202 once
    it is durable."""
    body = await json_body(request, shapes.RevokeRequest)  # exactly one selector
    block = body.block_issued_before is not False  # the default is to block
    grace = float(body.grace_seconds or 0)
    credentials_action = body.device_credentials or None
    revoker = request.app[appkeys.REVOKER]
    swept: list[str] = []
    if isinstance(body.claim, shapes.ClaimValue):
        claim = body.claim
        # The claim value names a group of identities, not a secret: audited as given.
        _audit(request, claim={"name": claim.name, "value": claim.value})
        result = await revoker.revoke_claim(
            claim.name, claim.value, block_issued_before=block, grace=grace
        )
    else:
        selector, value = body.selector()
        if selector == "token":
            _audit(request, fingerprints=[fingerprint(value)])
            result = await revoker.revoke_token(value, grace=grace)
        elif selector == "subject":
            _audit(request, subject=value)
            if credentials_action is not None:
                # Read before revoking: the subject's tokens say which clientIds it used.
                swept = await subject_client_ids(request.app, value)
            result = await revoker.revoke_subject(value, block_issued_before=block, grace=grace)
        else:
            _audit(request, clientId=value)
            swept = [value]
            result = await revoker.revoke_client(value, block_issued_before=block, grace=grace)
    _audit(
        request,
        fingerprints=list(result.fingerprints) or None,
        revokedLocally=result.revoked_locally,
        queued=result.queued,
        blockedIssuedBefore=result.blocked_before_ms,
        upstreamRevocationAfter=result.upstream_after_ms,
    )
    answer = result.to_dict()
    if credentials_action is not None:
        answer["deviceCredentials"] = await sweep_device_credentials(
            request.app, str(credentials_action), swept
        )
        _audit(request, deviceCredentials=answer["deviceCredentials"])
    return respond(msgspec.convert(answer, shapes.RevocationResult), status=202)


async def subject_client_ids(app: web.Application, subject: str) -> list[str]:
    """The clientIds a subject is known to use: its live tokens', and the policy's.

    The policy's are those its clientIds lists give the subject from `{sub}` alone, plus,
    for each live token, those they give with the claims that token was issued for. A
    clientId that only the subject's unseen claims would yield is not found: name it with a
    clientId revocation.
    """
    policy = app[appkeys.POLICY].current
    found: list[str] = []
    records = await app[appkeys.TOKENS].subject_tokens(subject)
    for claims in [{}, *(r.claims for r in records)]:
        allowed, _ = allowed_client_ids(policy, subject, claims)
        found.extend(allowed)
    found.extend(r.client_id for r in records if r.client_id is not None)
    return sorted(set(found))


async def sweep_device_credentials(
    app: web.Application, action: str, client_ids: Sequence[str]
) -> dict[str, Any]:
    """Unregister or refresh the device credentials of `client_ids`, each on its own.

    The token revocation is done and durable by now: one failed credential call is reported
    in `failed` rather than turning the whole answer into an error.
    """
    cloud = app[appkeys.CLOUD]
    instance_id = app[appkeys.SETTINGS].instance_id
    done: list[str] = []
    absent: list[str] = []
    failed: list[dict[str, str]] = []
    for client_id in client_ids:
        try:
            if action == "unregister":
                await cloud.unregister_device_credential(instance_id, client_id)
            else:
                await cloud.refresh_device_credential(instance_id, client_id)
        except CloudRejected as err:
            if err.vendor_code != "ParameterCheckFailed":
                failed.append({"clientId": client_id, "code": err.vendor_code})
            else:
                absent.append(client_id)
        except GatewayError as err:
            failed.append({"clientId": client_id, "code": err.code})
        else:
            done.append(client_id)
    return {"action": action, "clientIds": done, "absent": absent, "failed": failed}


async def revocations(request: web.Request) -> web.Response:
    """The upstream revocation queue: depth, oldest pending age, recent failures."""
    query_params(request, ())
    status = await request.app[appkeys.REVOKER].status()
    return respond(msgspec.convert(status, shapes.RevocationStatus))


# -- tokens --------------------------------------------------------------------------------


async def query_token(request: web.Request) -> web.Response:
    """Whether a token is valid: answered locally when we can, else QueryToken (cached 5 s)."""
    token = (await json_body(request, shapes.TokenQueryRequest)).token
    app = request.app
    token_print = fingerprint(token)
    _audit(request, fingerprints=[token_print])
    if await app[appkeys.REVOKER].is_revoked(token):
        return _verdict(request, token_print, None, _local("revoked"))
    record = await app[appkeys.TOKENS].lookup(token)
    if record is None:
        return _verdict(request, token_print, None, _local("unknown"))
    known = {"type": record.type, "resources": list(record.resources)}
    expire_ms = record.expire_ms
    if expire_ms <= app[appkeys.CLOCK].time() * 1000:
        return _verdict(request, token_print, expire_ms, {**known, **_local("expired")})
    cache = app[QUERY_CACHE]
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
    valid = cache.get(digest)
    cached = valid is not None
    if valid is None:
        valid = await app[appkeys.CLOUD].query_token(app[appkeys.SETTINGS].instance_id, token)
        cache[digest] = valid
    upstream = {"valid": valid, "source": "upstream", "cached": cached}
    return _verdict(request, token_print, expire_ms, {**known, **upstream})


def _local(reason: str) -> dict[str, Any]:
    return {"valid": False, "source": "local", "reason": reason}


def _verdict(
    request: web.Request, token_print: str, expire_ms: int | None, fields: dict[str, Any]
) -> web.Response:
    _audit(request, valid=fields["valid"], source=fields["source"], reason=fields.get("reason"))
    if expire_ms is not None:
        fields["expireTime"] = expire_ms
    return respond(msgspec.convert({"fingerprint": token_print, **fields}, shapes.TokenQueryResult))


async def subject_tokens(request: web.Request) -> web.Response:
    """The subject's live tokens: type, resources, expiry and fingerprint, never the value."""
    query_params(request, ())
    subject = shapes.check(request.match_info["subject"], SubjectSegment, "subject")
    records = await request.app[appkeys.TOKENS].subject_tokens(subject)
    records.sort(key=lambda r: (r.issued_ms, r.fingerprint))
    _audit(request, subject=subject, fingerprints=[r.fingerprint for r in records])
    tokens = msgspec.convert([r.summary() for r in records], list[shapes.TokenSummary])
    return respond(shapes.SubjectTokens(subject, tokens))


async def explain_policy(request: web.Request) -> web.Response:
    """What the current policy would grant for these claims, and whether it is cached."""
    body = await json_body(request, shapes.ExplainRequest)
    claims = body.claims
    client_id = body.client_id if isinstance(body.client_id, str) else None
    app = request.app
    subject_claim = app[appkeys.SETTINGS].jwt.subject_claim
    if isinstance(body.subject, str):
        subject = body.subject
    else:
        found = claims.get(subject_claim)
        if not isinstance(found, str) or not found:
            raise BadRequest(
                f"give subject, or a non-empty string '{subject_claim}' claim",
                extra={"field": "subject"},
            )
        subject = shapes.check(found, Subject, "subject")
    _audit(request, subject=subject, clientId=client_id)
    policy = app[appkeys.POLICY].current
    account = explain(policy, subject, claims, client_id)
    held = await app[appkeys.TOKENS].subject_tokens(subject)
    cached = []
    for planned in token_plan(evaluate(policy, subject, claims, client_id)):
        kind = planned.actions.replace(",", "")
        match = next(
            (
                r
                for r in held
                if r.type == kind
                and r.resources == planned.resources
                and (r.client_id == client_id or r.subject == SHARED_SUBJECT)
            ),
            None,
        )
        entry = shapes.CachedToken(kind, list(planned.resources), match is not None)
        if match is not None:
            entry.fingerprint, entry.expire_time = match.fingerprint, match.expire_ms
        cached.append(entry)
    account["cachedTokens"] = cached
    return respond(msgspec.convert(account, shapes.Explanation))


# -- sessions, device credentials, IoT ---------------------------------------------------


async def get_session(request: web.Request) -> web.Response:
    """Whether one MQTT client is online (QuerySessionByClientId)."""
    query_params(request, ())
    client_id = shapes.check(request.match_info["clientId"], ClientId, "clientId")
    _audit(request, clientId=client_id)
    app = request.app
    online = await app[appkeys.CLOUD].query_session(app[appkeys.SETTINGS].instance_id, client_id)
    return respond(shapes.Session(client_id, online))


async def query_sessions(request: web.Request) -> web.Response:
    """Whether up to 100 MQTT clients are online (BatchQuerySessionByClientIds, 10 per call)."""
    body = await json_body(request, shapes.SessionsQuery)
    client_ids = list(dict.fromkeys(body.client_ids))
    _audit(request, clientIds=client_ids)
    app = request.app
    online = await app[appkeys.CLOUD].batch_query_sessions(
        app[appkeys.SETTINGS].instance_id, client_ids
    )
    return respond(shapes.Sessions([shapes.Session(c, online.get(c, False)) for c in client_ids]))


async def list_device_credentials(request: web.Request) -> web.Response:
    """One page of a group's devices holding a device credential (ListDeviceCredentialClientId)."""
    params = query_params(request, ("pageSize", "pageNo", "nextToken"))
    group_id = shapes.check(request.match_info["groupId"], GroupId, "groupId")
    page_size = _int_param(params, "pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    page_no = _int_param(params, "pageNo", 1, 1, MAX_PAGE_NO)
    next_token = params.get("nextToken") or None
    if next_token is not None and (
        len(next_token) > MAX_NEXT_TOKEN_CHARS or not next_token.isprintable()
    ):
        raise BadRequest(
            f"nextToken must be printable and at most {MAX_NEXT_TOKEN_CHARS} characters",
            extra={"field": "nextToken"},
        )
    _audit(request, groupId=group_id)
    app = request.app
    try:
        page = await app[appkeys.CLOUD].list_device_credential_client_ids(
            app[appkeys.SETTINGS].instance_id,
            group_id,
            page_no=page_no,
            page_size=page_size,
            next_token=next_token,
        )
    except CloudRejected as err:
        if err.vendor_code != "InvalidParameter.NextToken":
            raise
        # The caller's own nextToken was refused: their mistake (400), not an upstream fault.
        raise BadRequest(
            "nextToken is not one this API returned (or it has expired)",
            extra={"field": "nextToken"},
        ) from err
    return respond(
        shapes.DeviceCredentialPage(
            group_id, page.total, page.client_ids, page.page_no, page.page_size, page.next_token
        )
    )


async def iot_client_ids(request: web.Request) -> web.Response:
    """The ClientIDs registered for an IoT Platform device (QueryClientIds)."""
    query_params(request, ())
    settings = request.app[appkeys.SETTINGS]
    if settings.iot_endpoint is None:
        raise NotConfigured(
            "IoT Platform lookups need AUTHSERVER_IOT_REGION_ID or AUTHSERVER_IOT_ENDPOINT",
            extra={"missingSetting": ["AUTHSERVER_IOT_REGION_ID", "AUTHSERVER_IOT_ENDPOINT"]},
        )
    iot_id = shapes.check(request.match_info["iotId"], IotId, "iotId")
    _audit(request, iotId=iot_id)
    try:
        found = await request.app[appkeys.CLOUD].query_client_ids(iot_id, settings.iot_instance_id)
    except CloudRejected as err:
        if err.vendor_code != "iot.device.NotExistedDevice":
            raise
        raise NotFound(
            "no IoT Platform device has this iotId", extra={"upstream_code": err.vendor_code}
        ) from err
    return respond(
        shapes.IotClientIds(
            iot_id, [shapes.IotClientId(c.client_id, c.create_time_ms) for c in found]
        )
    )


# -- routes --------------------------------------------------------------------------------


AdminRoute = tuple[str, str, Handler, str]


def setup_admin_routes(app: web.Application, extra: Sequence[AdminRoute] = ()) -> None:
    """Register the admin routes (and `extra` ones), each behind admin authentication.

    Loads the API key file too.
    """
    load_api_keys(app)
    clock = app[appkeys.CLOCK]
    app[QUERY_CACHE] = TTLCache(
        maxsize=QUERY_CACHE_SIZE, ttl=QUERY_CACHE_TTL, timer=clock.monotonic
    )
    routes: list[AdminRoute] = [
        ("POST", "revoke", revoke, "admin.revoke"),
        ("GET", "revocations", revocations, "admin.revocations"),
        ("POST", "query", query_token, "admin.query"),
        ("GET", "subjects/{subject}/tokens", subject_tokens, "admin.subject_tokens"),
        ("POST", "explain", explain_policy, "admin.explain"),
        ("GET", "sessions/{clientId}", get_session, "admin.session"),
        ("POST", "sessions:query", query_sessions, "admin.sessions_query"),
        (
            "GET",
            "groups/{groupId}/device-credentials",
            list_device_credentials,
            "admin.device_credentials",
        ),
        ("GET", "iot/devices/{iotId}/client-ids", iot_client_ids, "admin.iot_client_ids"),
        *extra,
    ]
    router = app.router
    for method, path, handler, name in routes:
        router.add_route(method, ADMIN_PREFIX + path, observed(guarded(handler)), name=name)
    # Last, so it matches only what no admin route does: authenticate, then 404, so an
    # unauthenticated caller cannot probe which admin paths exist.
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        router.add_route(
            method, ADMIN_PREFIX + r"{tail:[\s\S]*}", observed(guarded(unknown_admin_path))
        )


async def unknown_admin_path(request: web.Request) -> web.StreamResponse:
    """An authenticated request for an admin path that does not exist."""
    raise NotFound(f"no admin endpoint {request.method} {request.path}")
