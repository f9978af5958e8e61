"""The device endpoint: POST /v1/token turns an app JWT into MQTT credentials."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from msgspec import UNSET
from multidict import CIMultiDict

from authserver import appkeys, logs
from authserver.identity import JWTVerifier, bearer_token
from authserver.policy.holder import PolicyHolder
from authserver.policy.model import ACTIONS, Policy
from authserver.ratelimit import RateLimiter
from authserver.tokens.issuer import Asked, TokenIssuer
from authserver.tokens.service import clamp_ttl
from authserver.web import shapes
from authserver.web.request import arrived_body, read_body

# A CIMultiDict: web.Response copies it at half the cost of building one from a dict.
ANSWER_HEADERS = CIMultiDict({"Content-Type": "application/json", "Cache-Control": "no-store"})
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
    if not raw or raw.isspace():  # bodyless (or blank): the policy's defaults
        return Asked(None, None, None, clamp_ttl(min(policy.ttl_seconds, policy.max_ttl_seconds)))
    body = shapes.decode(shapes.TokenRequest, raw)
    topics, actions, ttl = body.topics, body.actions, body.ttl_seconds
    return Asked(
        None if body.client_id is UNSET else body.client_id,
        None if topics is UNSET else tuple(sorted(set(topics))),
        None if actions is UNSET else tuple(a for a in ACTIONS if a in actions),
        clamp_ttl(min(policy.ttl_seconds if ttl is UNSET else ttl, policy.max_ttl_seconds)),
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
    raw = arrived_body(request)
    if raw is None:  # the body is still coming
        raw = await read_body(request)

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
