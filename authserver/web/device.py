"""The device endpoint: POST /v1/token turns an app JWT into MQTT credentials."""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson
from aiohttp import web

from authserver import keys, logs
from authserver.clock import Clock
from authserver.cloud import quota
from authserver.errors import BadRequest
from authserver.identity import Identity, JWTVerifier, bearer_token
from authserver.policy_holder import PolicyHolder
from authserver.ratelimit import RateLimiter
from authserver.tokens.answers import Answer, Repeat
from authserver.tokens.revocation import Revoker
from authserver.tokens.service import MAX_TTL, MIN_TTL, TokenRequest, TokenService, clamp_ttl
from authserver.web.request import (
    optional_int,
    optional_str,
    optional_str_list,
    parse_object,
    read_body,
)

# <GroupId>@@@<DeviceId>; GroupId per 002 section 11.1, DeviceId letters, digits and -_.:
CLIENT_ID = re.compile(r"GID[_-][A-Za-z0-9_-]{3,60}@@@[A-Za-z0-9_.:-]{1,64}")
TOKEN_FIELDS = frozenset({"clientId", "topics", "actions", "ttlSeconds"})
MAX_REQUESTED_TOPICS = 100
ANSWER_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}
BEARER = "Bearer "


@dataclass(frozen=True, slots=True)
class _Services:
    """What POST /v1/token uses, looked up once at start-up rather than on every request."""

    limiter: RateLimiter
    verifier: JWTVerifier
    tokens: TokenService
    holder: PolicyHolder
    revoker: Revoker
    clock: Clock


SERVICES = web.AppKey("token_endpoint_services", _Services)


def _answer(services: _Services, identity: Identity, answer: Answer) -> web.Response:
    """A repeated request's answer, once its subject's limit and blocks allow it."""
    logs.bind_subject(identity.subject)
    services.limiter.check_subject(identity.subject)
    services.revoker.check(identity, answer.client_id)
    return web.Response(body=answer.body, headers=ANSWER_HEADERS)


async def bind_services(app: web.Application) -> None:
    """on_startup, after the services' cleanup contexts: resolve what the handler uses."""
    app[SERVICES] = _Services(
        limiter=app[keys.RATE_LIMITER],
        verifier=app[keys.VERIFIER],
        tokens=app[keys.TOKENS],
        holder=app[keys.POLICY],
        revoker=app[keys.REVOKER],
        clock=app[keys.CLOCK],
    )


async def post_token(request: web.Request) -> web.Response:
    """Issue (or reuse) MQTT tokens for the caller's grants."""
    services = request.app[SERVICES]
    limiter = services.limiter
    verifier = services.verifier
    answers = services.tokens.answers
    holder = services.holder
    headers = request.headers
    ip = None
    if limiter.per_ip:
        ip = limiter.check_ip(request.remote, headers.get("X-Forwarded-For"))
    authorization = headers.get("Authorization")
    bodyless = not request.body_exists
    now = services.clock.time()

    # The hottest path: a device repeating a bodyless request with the same JWT.
    if bodyless and authorization is not None:
        repeat = answers.repeat(authorization, holder.current.version_id, now, verifier.epoch)
        if repeat is not None:
            return _answer(services, repeat.identity, repeat.answer)

    known = None
    if authorization is not None and authorization.startswith(BEARER):
        # A token verified before, sent the usual way: no parsing, no coroutine.
        known = verifier.remembered(authorization[len(BEARER) :])
    seen_before = known is not None
    if known is None:
        identity = await verifier.verify(bearer_token(authorization))
    else:
        identity = known
    logs.bind_subject(identity.subject)
    limiter.check_subject(identity.subject)
    raw = b"" if bodyless else await read_body(request)

    # The hot path: the same user (same claims) asking the same thing again.
    who = (identity.subject, holder.claims_key(identity.claims))
    answer = answers.fresh(who, raw, holder.current.version_id, services.clock.time() * 1000)
    if answer is not None:
        services.revoker.check(identity, answer.client_id)
        if seen_before and bodyless and authorization is not None:
            # Asked twice with this JWT: the next time, one lookup.
            answers.remember_repeat(authorization, Repeat(answer, identity, verifier.epoch))
        return web.Response(body=answer.body, headers=ANSWER_HEADERS)

    # From here on the request may reach the upstream: the shared rate limits need to know who.
    limiter.asking(identity.subject, ip)
    quota.asking(identity.subject)
    tokens = services.tokens
    revoker = services.revoker
    body = parse_object(raw, TOKEN_FIELDS, optional=True)
    client_id = optional_str(body, "clientId", max_length=128)
    if client_id is not None and not CLIENT_ID.fullmatch(client_id):
        raise BadRequest(
            "clientId must look like GID_group@@@device (letters, digits, - _ . :)",
            extra={"field": "clientId"},
        )
    topics = optional_str_list(body, "topics", max_items=MAX_REQUESTED_TOPICS)
    actions = optional_str_list(body, "actions", max_items=2, allowed=("R", "W"))
    ttl_asked = optional_int(body, "ttlSeconds", minimum=MIN_TTL, maximum=MAX_TTL)

    revoker.check(identity, client_id)
    plan = holder.plan(identity.subject, identity.claims, client_id, topics, actions)
    ttl = clamp_ttl(min(ttl_asked or plan.ttl_seconds, plan.max_ttl_seconds))

    settings = request.app[keys.SETTINGS]
    deadline = services.clock.monotonic() + settings.request_deadline
    generation = tokens.answers.generation
    credentials = await tokens.credentials(
        TokenRequest(
            subject=identity.subject,
            client_id=client_id,
            read=plan.read,
            write=plan.write,
            ttl=ttl,
            claims=plan.claims,
        ),
        deadline,
    )
    data = orjson.dumps(credentials.to_dict())
    tokens.answers.put(
        who,
        raw,
        Answer(data, plan.policy_version, credentials.renew_at_ms, credentials.keys, client_id),
        generation,
    )
    return web.Response(body=data, headers=ANSWER_HEADERS)
