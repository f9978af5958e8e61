"""The device endpoint: POST /v1/token turns an app JWT into MQTT credentials."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

import orjson
from aiohttp import web

from authserver import appkeys, logs
from authserver.clock import Clock
from authserver.cloud import quota
from authserver.errors import BadRequest
from authserver.identity import Identity, JWTVerifier, bearer_token
from authserver.policy.holder import PolicyHolder
from authserver.policy.model import CLIENT_ID, Policy
from authserver.ratelimit import RateLimiter
from authserver.tokens.answers import Answer, Repeat, answer_body
from authserver.tokens.revocation import Revoker
from authserver.tokens.service import MAX_TTL, MIN_TTL, TokenRequest, TokenService, clamp_ttl
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
    tokens: TokenService
    holder: PolicyHolder
    revoker: Revoker
    clock: Clock
    request_deadline: float


SERVICES = web.AppKey("token_endpoint_services", _Services)


class Asked(NamedTuple):
    """A POST /v1/token body, canonical: two requests are equal only if they get one answer.

    The policy's decision depends on the set of topics and of actions, never on their order
    or repeats (`restrict` takes each topic once, `normalize` sorts the outcome), and the
    lifetime only through the policy's default and maximum, which are the same for every
    rule of a policy (an answer is kept per policy version).
    """

    client_id: str | None
    topics: tuple[str, ...] | None  # sorted, each once
    actions: tuple[str, ...] | None  # R before W, each once
    ttl: int  # the lifetime the tokens get


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


def _repeated(services: _Services, repeat: Repeat) -> web.Response:
    """A repeated request's answer, once its subject's blocks allow it."""
    identity = repeat.identity
    logs.bind_subject(identity.subject)
    services.revoker.check(identity, repeat.answer.client_id)
    return web.Response(body=repeat.answer.body, headers=ANSWER_HEADERS)


async def bind_services(app: web.Application) -> None:
    """on_startup, after the services' cleanup contexts: resolve what the handler uses."""
    app[SERVICES] = _Services(
        limiter=app[appkeys.RATE_LIMITER],
        verifier=app[appkeys.VERIFIER],
        tokens=app[appkeys.TOKENS],
        holder=app[appkeys.POLICY],
        revoker=app[appkeys.REVOKER],
        clock=app[appkeys.CLOCK],
        request_deadline=app[appkeys.SETTINGS].request_deadline,
    )


async def post_token(request: web.Request) -> web.Response:
    """Issue (or reuse) MQTT tokens for the caller's grants.

    Limits: the client IP on every request; answers from the caches cost a lookup and are
    never refused by a per-subject limit. Only a request the answer cache cannot answer is
    counted against the subject's request limit (identical requests in flight together
    once), and only one that is about to call ApplyToken against its mint budget.
    """
    services = request.app[SERVICES]
    limiter = services.limiter
    verifier = services.verifier
    answers = services.tokens.answers
    holder = services.holder
    headers = request.headers
    ip = None
    if limiter.per_ip:
        ip = limiter.check_ip(request.remote, headers.getall("X-Forwarded-For", ()))
    authorization = headers.get("Authorization")
    raw = await read_body(request) if request.body_exists else b""

    # The hottest path: a device repeating a request (header and body) it sent before.
    if authorization is not None:
        version = holder.current.version_id
        repeat = answers.repeat(authorization, raw, version, services.clock.time(), verifier.epoch)
        if repeat is not None:
            return _repeated(services, repeat)

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
    policy = holder.current
    asked = parse_asked(raw, policy)

    # The hot path: the same user (same claims) asking the same thing again.
    who = (identity.subject, holder.claims_key(identity.claims))
    answer = answers.fresh(who, asked, policy.version_id, services.clock.time() * 1000)
    if answer is None:
        with answers.working(who, asked) as alone:
            if alone:
                limiter.check_subject(identity.subject)
            answer = await _work_out(services, identity, who, asked, ip)
    else:
        services.revoker.check(identity, answer.client_id)
        if seen_before and authorization is not None:
            # Asked twice with this JWT and body: the next time, one lookup.
            answers.remember_repeat(authorization, raw, Repeat(answer, identity, verifier.epoch))
    return web.Response(body=answer.body, headers=ANSWER_HEADERS)


async def _work_out(
    services: _Services, identity: Identity, who: Hashable, asked: Asked, ip: str | None
) -> Answer:
    """Decide, gather or mint the tokens, and keep the answer for the next time."""
    services.revoker.check(identity, asked.client_id)
    plan = services.holder.plan(
        identity.subject, identity.claims, asked.client_id, asked.topics, asked.actions
    )
    # From here on the request may reach the upstream: the mint budget needs to know who.
    services.limiter.asking(identity.subject, ip)
    quota.asking(identity.subject)  # the governor serves its slots fairly across subjects
    answers = services.tokens.answers
    generation = answers.generation
    credentials = await services.tokens.credentials(
        TokenRequest(
            subject=identity.subject,
            client_id=asked.client_id,
            read=plan.read,
            write=plan.write,
            ttl=asked.ttl,
            claims=plan.claims,
        ),
        services.clock.monotonic() + services.request_deadline,
    )
    answer = Answer(
        answer_body(orjson.dumps(credentials.to_dict())),
        plan.policy_version,
        credentials.renew_at_ms,
        credentials.keys,
        asked.client_id,
    )
    answers.put(who, asked, answer, generation)
    return answer
