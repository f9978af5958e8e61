"""Evaluate a policy for one subject, narrow it to a request, and explain the outcome.

Decisions made here:

- **Default deny.** A subject gets the union of the ``everyone`` rules, the rules of every
  group named in its groups claim, and the rules under its exact subject; nothing else.
- **Groups claim.** A list of strings (non-strings are ignored and reported as refusals), or
  one string holding whitespace-separated names (the OAuth ``scope`` convention). Any other
  type grants no group.
- **Substitution never widens a grant.** A placeholder value must be a non-empty str (an int
  is written with ``str()``; booleans, floats, lists, mappings and null are refused) that is
  valid UTF-8 and contains none of ``+ # /``, NUL, ``,`` or control characters, and that does
  not start a topic level with ``$`` (``{sub}/#`` with sub ``$SYS`` would reach broker topics).
  A refused value makes that one topic of that rule not granted; the refusal is recorded in
  ``Decision.refused`` with the reason. A value like ``..`` is kept: MQTT gives it no meaning,
  so the grant is exactly the literal topic.
- **restrict() and actions.** Explicit ``actions`` are a demand: each one must be granted, and
  each requested topic must lie inside the grants of *every* requested action, else 403 naming
  the topic and action. Without ``actions`` the request means "whatever I may do with these
  topics": each topic goes into the set of every action that grants it, and only a topic that no
  action grants is a 403. An empty outcome is a 403 too, so the caller never applies for an
  empty token.
- **One token or two.** When the read set equals the write set one ``R,W`` token is requested.
- **ClientIds are part of the identity.** The clientIds a subject may use are the expansions
  of every ``clientIds`` list that applies to it (the top level, its groups, its own user
  entry: a union, like rules), under the same value guards as topics, each of which must be
  a valid ClientId. ``{client_id}`` expands only to a requested clientId that is one of them;
  restrict() refuses any other with 403 ``client_id_not_allowed``, and so does a request
  naming a clientId when no list applies. The detail never lists the allowed clientIds.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from authserver.errors import BadRequest, GrantTooBroad, PolicyDenied
from authserver.policy.model import (
    ACTIONS,
    CLIENT_ID,
    READ,
    WRITE,
    ClientIdNotAllowed,
    ClientIds,
    Decision,
    DeviceCredentialNotAllowed,
    Policy,
    Refusal,
    Rule,
    RuleMatch,
    Template,
    TokenRequest,
    TopicNotGranted,
    Var,
)
from authserver.topics import SEPARATOR, FilterSet, InvalidTopicFilter, normalize, validate_filter

DEFAULT_RESOURCE_LIMIT = 100
_ACTION_NAMES = {READ: "read", WRITE: "write"}
_SHOWN_CHARS = 64
_NOT_ALLOWED = "{client_id}: the requested clientId is not one this identity may use"
_REFUSED_CHARS = {
    "+": "the MQTT wildcard '+'",
    "#": "the MQTT wildcard '#'",
    "/": "'/' (it would add topic levels)",
    "\x00": "NUL",
    ",": "',' (it would split the Resources list)",
}


def _shown(value: str) -> str:
    """A log-safe (ASCII), bounded rendering of an untrusted value."""
    text = ascii(value[:_SHOWN_CHARS])
    if len(text) > _SHOWN_CHARS or len(value) > _SHOWN_CHARS:
        return text[:_SHOWN_CHARS] + "..."
    return text


def subject_groups(
    policy: Policy, claims: Mapping[str, Any]
) -> tuple[tuple[str, ...], tuple[Refusal, ...]]:
    """The group names the subject's groups claim carries, and any values that were ignored."""
    name = policy.groups_claim
    where = "groupsClaim"
    raw = claims.get(name)
    if raw is None:
        return (), ()
    if isinstance(raw, str):
        return tuple(dict.fromkeys(raw.split())), ()
    if not isinstance(raw, list | tuple):
        reason = (
            f"claim {name!r} is {type(raw).__name__}, not a list of group names; no group applies"
        )
        return (), (Refusal(where, f"{{claims.{name}}}", reason),)
    groups: list[str] = []
    refused: list[Refusal] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            groups.append(item)
        else:
            reason = f"claim {name!r} item {i} is {type(item).__name__}, not a string; ignored"
            refused.append(Refusal(where, f"{{claims.{name}}}", reason))
    return tuple(dict.fromkeys(groups)), tuple(refused)


def _lookup(var: Var, subject: str, claims: Mapping[str, Any], client_id: str | None) -> object:
    if var.name == "sub":
        return subject
    if var.name == "client_id":
        return client_id
    claim = var.claim
    assert claim is not None  # the loader accepts only sub, client_id and claims.NAME
    return claims.get(claim)


def _value_problem(value: object, starts_level: bool) -> tuple[str | None, str]:
    """Return (problem, text): a reason to refuse the value, or None and its text."""
    if value is None:
        return "is missing", ""
    if isinstance(value, bool):
        return "is a boolean, not a string", ""
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return f"is {type(value).__name__}, not a string", ""
    if not value:
        return "is empty", ""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"value {_shown(value)} is not valid UTF-8", ""
    for ch, what in _REFUSED_CHARS.items():
        if ch in value:
            return f"value {_shown(value)} contains {what}", ""
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        return f"value {_shown(value)} contains a control character", ""
    if starts_level and value.startswith("$"):
        return f"value {_shown(value)} would start a topic level with '$'", ""
    return None, value


def _substitute(
    template: Template,
    subject: str,
    claims: Mapping[str, Any],
    client_id: str | None,
    *,
    whole_is_level: bool = False,
) -> tuple[str | None, str | None]:
    """Fill in a template's placeholders: (text, None), or (None, reason) for a refused value."""
    out: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        starts_level = whole_is_level or not out or out[-1].endswith(SEPARATOR)
        raw = _lookup(part, subject, claims, client_id)
        problem, text = _value_problem(raw, starts_level)
        if problem is not None:
            what = {"sub": "subject", "client_id": "client id"}.get(part.name, "")
            what = what or f"claim {part.claim!r}"
            return None, f"{{{part.name}}}: {what} {problem}"
        out.append(text)
    return "".join(out), None


def expand(
    template: Template, subject: str, claims: Mapping[str, Any], client_id: str | None
) -> tuple[str | None, str | None]:
    """Substitute a template: (topic, None) when granted, (None, reason) when refused."""
    topic, reason = _substitute(template, subject, claims, client_id)
    if topic is None:
        return None, reason
    try:
        validate_filter(topic)
    except InvalidTopicFilter as err:
        return None, f"the expanded topic is refused: {err.detail}"
    return topic, None


def expand_client_id(
    template: Template, subject: str, claims: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """A ``clientIds`` template for one identity: (clientId, None), or (None, reason)."""
    # Every value is guarded as if it started a topic level: a clientId never starts with '$'.
    client_id, reason = _substitute(template, subject, claims, None, whole_is_level=True)
    if client_id is None:
        return None, reason
    if not CLIENT_ID.fullmatch(client_id):
        return None, (
            f"the expanded clientId {_shown(client_id)} is not a valid ClientId "
            "(GID_group@@@device: letters, digits, - _ . :)"
        )
    return client_id, None


def client_id_lists(policy: Policy, subject: str, groups: Collection[str]) -> tuple[ClientIds, ...]:
    """The clientIds lists that apply to a subject: top level, its groups, its user entry."""
    lists = [policy.client_ids] if policy.client_ids is not None else []
    lists.extend(ids for name, ids in policy.group_client_ids.items() if name in groups)
    own = policy.user_client_ids.get(subject)
    if own is not None:
        lists.append(own)
    return tuple(lists)


def allowed_client_ids(
    policy: Policy, subject: str, claims: Mapping[str, Any], groups: Collection[str] | None = None
) -> tuple[tuple[str, ...], tuple[Refusal, ...]]:
    """Every clientId this identity may use (policy order), and the expansions refused."""
    if groups is None:
        groups, _ = subject_groups(policy, claims)
    allowed: list[str] = []
    refused: list[Refusal] = []
    for ids in client_id_lists(policy, subject, groups):
        for i, template in enumerate(ids.templates):
            client_id, reason = expand_client_id(template, subject, claims)
            if client_id is None:
                refused.append(Refusal(f"{ids.label}[{i}]", template.source, reason or "refused"))
            elif client_id not in allowed:
                allowed.append(client_id)
    return tuple(allowed), tuple(refused)


def applicable_rules(policy: Policy, subject: str, groups: Collection[str]) -> tuple[Rule, ...]:
    """The rules that apply to a subject with these groups, in policy order."""
    rules = list(policy.everyone)
    for name, group_rules in policy.groups.items():
        if name in groups:
            rules.extend(group_rules)
    rules.extend(policy.users.get(subject, ()))
    return tuple(rules)


def evaluate(
    policy: Policy, subject: str, claims: Mapping[str, Any], client_id: str | None = None
) -> Decision:
    """Everything the policy grants ``subject`` (default deny), with matches and refusals."""
    groups, group_refusals = subject_groups(policy, claims)
    client_ids, id_refusals = allowed_client_ids(policy, subject, claims, groups)
    allowed = client_id is None or client_id in client_ids
    refused = [*group_refusals, *id_refusals]
    matched: list[RuleMatch] = []
    by_action: dict[str, list[str]] = {READ: [], WRITE: []}
    for rule in applicable_rules(policy, subject, groups):
        topics: list[str] = []
        for template in rule.topics:
            if not allowed and template.uses_client_id:
                refused.append(Refusal(rule.label, template.source, _NOT_ALLOWED))
                continue
            topic, reason = expand(template, subject, claims, client_id)
            if topic is None:
                refused.append(Refusal(rule.label, template.source, reason or "refused"))
            elif topic not in topics:
                topics.append(topic)
        actions = tuple(a for a in ACTIONS if a in rule.actions)
        matched.append(RuleMatch(rule.label, actions, tuple(topics)))
        for action in actions:
            by_action[action].extend(topics)
    return Decision(
        subject=subject,
        policy_version=policy.version_id,
        read=normalize(by_action[READ]),
        write=normalize(by_action[WRITE]),
        matched=tuple(matched),
        refused=tuple(refused),
        ttl_seconds=policy.ttl_seconds,
        max_ttl_seconds=policy.max_ttl_seconds,
        client_ids=client_ids,
        client_id=client_id,
    )


def check_client_id(decision: Decision) -> None:
    """Raise ClientIdNotAllowed (403) unless the requested clientId is one the identity has.

    The detail names the request's clientId and nothing of the allowed ones: a device probing
    for another device's clientId learns only "no".
    """
    if decision.client_id_allowed:
        return
    raise ClientIdNotAllowed(
        f"clientId {_shown(decision.client_id or '')} is not one the policy allows "
        f"subject {decision.subject!r} to use",
        extra={"field": "clientId"},
    )


def device_credential_grant(policy: Policy, subject: str, claims: Mapping[str, Any]) -> str | None:
    """The entry letting this identity hold a device credential (its label), or None."""
    if subject in policy.device_credential_users:
        return f"users.{subject}.deviceCredentials"
    groups, _ = subject_groups(policy, claims)
    for name in groups:
        if name in policy.device_credential_groups:
            return f"groups.{name}.deviceCredentials"
    return None


def check_device_credential(
    policy: Policy, subject: str, claims: Mapping[str, Any], client_id: str
) -> str:
    """The granting entry's label, if this identity may hold a credential for `client_id`.

    Raises ClientIdNotAllowed (403) when the clientId is not one the identity may use, and
    DeviceCredentialNotAllowed (403) when no ``deviceCredentials: true`` entry applies.
    """
    check_client_id(evaluate(policy, subject, claims, client_id))
    label = device_credential_grant(policy, subject, claims)
    if label is None:
        raise DeviceCredentialNotAllowed(
            f"the policy lets subject {subject!r} hold no device credential "
            "(no deviceCredentials: true entry applies)"
        )
    return label


def _wanted_actions(decision: Decision, actions: Collection[str] | None) -> tuple[str, ...]:
    if actions is None:
        return tuple(a for a in ACTIONS if decision.grants(a))
    if isinstance(actions, str):
        raise BadRequest('actions must be a list such as ["R"] or ["R", "W"]')
    if not actions:
        raise BadRequest("actions must not be empty")
    for action in actions:
        if action not in ACTIONS:
            raise BadRequest(f'unknown action {action!r}; expected "R" or "W"')
    for action in ACTIONS:
        if action in actions and not decision.grants(action):
            raise PolicyDenied(
                f"the policy grants no {_ACTION_NAMES[action]} access (action {action}) "
                f"to subject {decision.subject!r}",
                extra={"action": action},
            )
    return tuple(a for a in ACTIONS if a in actions)


def restrict(
    decision: Decision,
    topics: Sequence[str] | None,
    actions: Collection[str] | None,
) -> Decision:
    """Narrow a decision to the requested topics/actions (least privilege); raise 403 if outside.

    The requested clientId is part of the request: one the identity may not use is a 403 first.
    """
    check_client_id(decision)
    wanted = _wanted_actions(decision, actions)
    if not wanted:
        raise PolicyDenied(f"the policy grants nothing to subject {decision.subject!r}")
    if topics is None:
        return dataclasses.replace(
            decision,
            read=decision.read if READ in wanted else (),
            write=decision.write if WRITE in wanted else (),
        )
    if isinstance(topics, str):
        raise BadRequest("topics must be a list of topic filters, not a string")
    if not topics:
        raise BadRequest("topics must not be empty")
    for topic in topics:  # before hashing: a JSON body may hold lists or objects here
        validate_filter(topic)
    grants = {a: FilterSet(decision.grants(a)) for a in wanted}
    chosen: dict[str, list[str]] = {READ: [], WRITE: []}
    for topic in dict.fromkeys(topics):
        granting = [a for a in wanted if grants[a].covers(topic)]
        if actions is not None:
            missing = next((a for a in wanted if a not in granting), None)
            if missing is not None:
                raise TopicNotGranted(
                    f"topic {topic!r} is not granted for {_ACTION_NAMES[missing]} "
                    f"(action {missing}) to subject {decision.subject!r}",
                    extra={"topic": topic, "action": missing},
                )
        elif not granting:
            raise TopicNotGranted(
                f"topic {topic!r} is not granted to subject {decision.subject!r}",
                extra={"topic": topic},
            )
        for action in granting:
            chosen[action].append(topic)
    return dataclasses.replace(
        decision, read=normalize(chosen[READ]), write=normalize(chosen[WRITE])
    )


def check_limits(decision: Decision, limit: int = DEFAULT_RESOURCE_LIMIT) -> None:
    """Raise GrantTooBroad (422) when a token would carry more than ``limit`` resources."""
    for action in ACTIONS:
        resources = decision.grants(action)
        if len(resources) <= limit:
            continue
        counts: Counter[str] = Counter()
        for match in decision.matched:
            if action in match.actions and match.topics:
                granted = FilterSet(match.topics)
                counts[match.rule] += sum(1 for r in resources if granted.covers(r))
        top = ", ".join(f"{rule} contributed {n}" for rule, n in counts.most_common(3))
        raise GrantTooBroad(
            f"{action} would carry {len(resources)} resources (limit {limit})"
            + (f"; {top}" if top else ""),
            extra={
                "action": action,
                "resources": len(resources),
                "limit": limit,
                "contributors": dict(counts.most_common()),
            },
        )


def token_plan(decision: Decision) -> tuple[TokenRequest, ...]:
    """The ApplyToken calls for a decision: one ``R,W`` when read equals write, else R and W."""
    if decision.read and decision.read == decision.write:
        return (TokenRequest(f"{READ},{WRITE}", decision.read),)
    return tuple(
        TokenRequest(action, decision.grants(action))
        for action in ACTIONS
        if decision.grants(action)
    )


def explain(
    policy: Policy,
    subject: str,
    claims: Mapping[str, Any],
    client_id: str | None = None,
    *,
    limit: int = DEFAULT_RESOURCE_LIMIT,
) -> dict[str, Any]:
    """A JSON-able account of what the policy grants and the exact Resources strings sent."""
    decision = evaluate(policy, subject, claims, client_id)
    groups, _ = subject_groups(policy, claims)
    try:
        check_limits(decision, limit)
        too_broad = None
    except GrantTooBroad as err:
        too_broad = err.detail
    return {
        "policy": {"source": policy.source, "version": policy.version_id},
        "subject": subject,
        "clientId": client_id,
        "clientIds": list(decision.client_ids),
        "clientIdAllowed": None if client_id is None else decision.client_id_allowed,
        "groups": {
            "claim": policy.groups_claim,
            "values": list(groups),
            "matched": [g for g in policy.groups if g in groups],
        },
        "matched": [
            {"rule": m.rule, "actions": list(m.actions), "topics": list(m.topics)}
            for m in decision.matched
        ],
        "refused": [
            {"rule": r.rule, "template": r.template, "reason": r.reason} for r in decision.refused
        ],
        "read": list(decision.read),
        "write": list(decision.write),
        "tokens": [
            {"actions": t.actions, "resources": t.resources_param, "count": len(t.resources)}
            for t in token_plan(decision)
        ],
        "ttlSeconds": decision.ttl_seconds,
        "maxTtlSeconds": decision.max_ttl_seconds,
        "tooBroad": too_broad,
    }
