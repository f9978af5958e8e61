"""The device endpoint: POST /v1/token turns an app JWT into MQTT credentials."""

from __future__ import annotations

import re

import orjson
from aiohttp import web

from authserver import keys, logs
from authserver.errors import BadRequest
from authserver.identity import bearer_token
from authserver.tokens.answers import Answer
from authserver.tokens.service import MAX_TTL, MIN_TTL, TokenRequest, clamp_ttl
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
NO_STORE = {"Cache-Control": "no-store"}
JSON = "application/json"


async def post_token(request: web.Request) -> web.Response:
    """Issue (or reuse) MQTT tokens for the caller's grants."""
    app = request.app
    limiter = app[keys.RATE_LIMITER]
    ip = limiter.check_ip(request.remote, request.headers.get("X-Forwarded-For"))
    jwt = bearer_token(request.headers.get("Authorization"))
    identity = await app[keys.VERIFIER].verify(jwt)
    logs.bind_subject(identity.subject)
    limiter.check_subject(identity.subject, ip)
    raw = await read_body(request)
    tokens = app[keys.TOKENS]
    holder = app[keys.POLICY]
    revoker = app[keys.REVOKER]

    # The hot path: the same user (same claims) asking the same thing again.
    who = (identity.subject, holder.claims_key(identity.claims))
    answer = tokens.answers.fresh(
        who, raw, holder.current.version_id, app[keys.CLOCK].time() * 1000
    )
    if answer is not None:
        revoker.check(identity, answer.client_id)
        return web.Response(body=answer.body, content_type=JSON, headers=NO_STORE)

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

    settings = app[keys.SETTINGS]
    deadline = app[keys.CLOCK].monotonic() + settings.request_deadline
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
    return web.Response(body=data, content_type=JSON, headers=NO_STORE)
