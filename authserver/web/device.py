"""The device endpoint: POST /v1/token turns an app JWT into MQTT credentials."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from authserver import appkeys, logs
from authserver.errors import BadRequest
from authserver.identity import JWTVerifier, bearer_token
from authserver.policy.holder import PolicyHolder
from authserver.policy.model import CLIENT_ID, Policy
from authserver.ratelimit import RateLimiter
from authserver.tokens.issuer import Asked, TokenIssuer
from authserver.tokens.service import MAX_TTL, MIN_TTL, clamp_ttl
from authserver.web.request import (
    optional_int,
    optional_str,
    optional_str_list,
    parse_object,
    read_body,
)

TOKEN_FIELDS = frozenset({"clientId", "topics", "actions", "ttlSeconds"})
MAX_REQUESTED_TOPICS = 100
ACTIONS = ("R", "W")
ANSWER_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}
BEARER = "Bearer "


@dataclass(frozen=True, slots=True)
class _Services:
    """What POST /v1/token uses, looked up once at start-up rather than on every request."""

    limiter: RateLimiter
    verifier: JWTVerifier
    holder: PolicyHolder
    issuer: TokenIssuer


SERVICES = web.AppKey("token_endpoint_services", _Services)


def parse_asked(raw: bytes, policy: Policy) -> Asked:
    """The canonical request in `raw` under `policy`; BadRequest names the first bad field."""
    body = parse_object(raw, TOKEN_FIELDS, optional=True)
    client_id = optional_str(body, "clientId", max_length=128)
    if client_id is not None and not CLIENT_ID.fullmatch(client_id):
        raise BadRequest(
            "clientId must look like GID_group@@@device (letters, digits, - _ . :)",
            extra={"field": "clientId"},
        )
    topics = optional_str_list(body, "topics", max_items=MAX_REQUESTED_TOPICS)
    actions = optional_str_list(body, "actions", max_items=2, allowed=ACTIONS)
    ttl_asked = optional_int(body, "ttlSeconds", minimum=MIN_TTL, maximum=MAX_TTL)
    return Asked(
        client_id,
        None if topics is None else tuple(sorted(set(topics))),
        None if actions is None else tuple(a for a in ACTIONS if a in actions),
        clamp_ttl(min(ttl_asked or policy.ttl_seconds, policy.max_ttl_seconds)),
    )


async def bind_services(app: web.Application) -> None:
    """on_startup, after the services' cleanup contexts: resolve what the handler uses."""
    app[SERVICES] = _Services(
        limiter=app[appkeys.RATE_LIMITER],
        verifier=app[appkeys.VERIFIER],
        holder=app[appkeys.POLICY],
        issuer=app[appkeys.ISSUER],
    )


async def post_token(request: web.Request) -> web.Response:
    """Issue (or reuse) MQTT tokens for the caller's grants.

    HTTP only: the client IP's limit, the body, the JWT; the token path (caches, the
    per-subject limits, revocation blocks) is `TokenIssuer`'s.
    """
    services = request.app[SERVICES]
    limiter = services.limiter
    verifier = services.verifier
    issuer = services.issuer
    headers = request.headers
    ip = None
    if limiter.per_ip:
        ip = limiter.check_ip(request.remote, headers.getall("X-Forwarded-For", ()))
    authorization = headers.get("Authorization")
    raw = await read_body(request) if request.body_exists else b""

    # The hottest path: a device repeating a request (header and body) it sent before.
    if authorization is not None:
        repeat = issuer.repeated(authorization, raw)
        if repeat is not None:
            return web.Response(body=repeat.answer.body, headers=ANSWER_HEADERS)

    identity = None
    if authorization is not None and authorization.startswith(BEARER):
        # A token verified before, sent the usual way: no parsing, no coroutine.
        identity = verifier.remembered(authorization[len(BEARER) :])
    sent_as = None
    if identity is None:
        identity = await verifier.verify(bearer_token(authorization))
    elif authorization is not None:
        sent_as = (authorization, raw)
    logs.bind_subject(identity.subject)
    asked = parse_asked(raw, services.holder.current)
    body = await issuer.answer(identity, asked, ip=ip, sent_as=sent_as)
    return web.Response(body=body, headers=ANSWER_HEADERS)
