"""Property tests: hostile subjects and claims never widen a grant; Resources stay well-formed."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authserver.policy import (
    Decision,
    TopicNotGranted,
    evaluate,
    parse_policy,
    restrict,
    token_plan,
)
from authserver.policy.loader import parse_template
from authserver.policy.model import Var
from authserver.topics import (
    MAX_FILTER_BYTES,
    InvalidTopicFilter,
    covers,
    normalize,
    validate_filter,
)
from tests.policy.test_loader import ISSUE_EXAMPLE

TEMPLATES = [
    "d/{sub}/#",
    "{sub}",
    "{sub}/in",
    "x/{sub}-{client_id}/+",
    "t/{claims.tenant}/{claims.site}/#",
    "p-{claims.tenant}",
    "{claims.tenant}{sub}/z",
    "$SYS/{claims.site}",
    "//{sub}",
]
CLIENT_IDS = "GID_hostile@@@{claims.device}"
POLICY = parse_policy(
    f"version: 1\nclientIds: ['{CLIENT_IDS}']\neveryone:\n  - topics: ["
    + ", ".join(f"'{t}'" for t in TEMPLATES)
    + "]\n    actions: [R, W]\n",
    "hostile.yaml",
)

_PIECES = st.sampled_from(
    [
        *["+", "#", "/", "..", "", "\x00", ",", "$", "$SYS", "\ud800", "\udcff", "é", "🚀"],
        *["\u202e", " ", "a", "b1", "\n", "\x85", "\x7f", "+/#", "{sub}", "%2B", "\ufeff"],
    ]
)
_TEXT = st.one_of(
    st.lists(_PIECES, max_size=6).map("".join),
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.integers(1, 1300).map(lambda n: "v" * n),
)
_VALUE = st.one_of(
    _TEXT,
    _TEXT,
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.none(),
    st.lists(_TEXT, max_size=2),
    st.dictionaries(_TEXT, _TEXT, max_size=1),
)


def _acceptable(value: object, starts_level: bool) -> str | None:
    """An oracle written apart from the engine: the text a value may stand for, or None."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if text == "" or any(ch in "+#/," for ch in text):
        return None
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return None
    if starts_level and text.startswith("$"):
        return None
    return text


_DEVICE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


def _own_client_id(device: object) -> str | None:
    """An oracle apart from the engine: the clientId CLIENT_IDS gives this device claim."""
    text = _acceptable(device, starts_level=True)
    if text is None or not 1 <= len(text) <= 64 or not set(text) <= _DEVICE_CHARS:
        return None
    return "GID_hostile@@@" + text


def _literal(
    template: str, subject: str, claims: dict[str, Any], client_id: str | None
) -> str | None:
    """The template with each placeholder replaced by its literal value, or None if refused."""
    out = ""
    for part in parse_template(template).parts:
        if isinstance(part, str):
            out += part
            continue
        assert isinstance(part, Var)
        raw: object = {"sub": subject, "client_id": client_id}.get(part.name)
        if part.claim is not None:
            raw = claims.get(part.claim)
        text = _acceptable(raw, starts_level=out == "" or out.endswith("/"))
        if text is None:
            return None
        out += text
    if len(out.encode("utf-8")) > MAX_FILTER_BYTES:
        return None
    return out


_LOOK_ALIKES = st.sampled_from(
    ["dev1", "DEV1", "dev\u0435", "dev\uff11", "dev1 ", " dev1", "d@@@x", "d:1.2-3_4", "x" * 65]
)
_DEVICE = st.one_of(_VALUE, _LOOK_ALIKES, st.from_regex(r"[A-Za-z0-9_.:-]{1,70}", fullmatch=True))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=_TEXT,
    tenant=_VALUE,
    site=_VALUE,
    device=_DEVICE,
    client_id=st.one_of(st.none(), _TEXT, _LOOK_ALIKES.map("GID_hostile@@@".__add__)),
    ask_own=st.booleans(),
    drop=st.sets(st.sampled_from(["tenant", "site", "device"])),
)
def test_hostile_values_never_widen_a_grant(
    subject: str,
    tenant: object,
    site: object,
    device: object,
    client_id: str | None,
    ask_own: bool,
    drop: set[str],
) -> None:
    values = {"tenant": tenant, "site": site, "device": device}
    claims = {k: v for k, v in values.items() if k not in drop}
    own = _own_client_id(claims.get("device"))
    if ask_own and own is not None:
        client_id = own
    decision = evaluate(POLICY, subject, claims, client_id)

    # {client_id} stands for the requested clientId only when it is the identity's own.
    assert decision.client_ids == (() if own is None else (own,))
    assert decision.client_id_allowed == (client_id is None or client_id == own)
    vouched = client_id if client_id == own else None
    expected = {t: _literal(t, subject, claims, vouched) for t in TEMPLATES}
    [match] = decision.matched
    assert set(match.topics) == {v for v in expected.values() if v is not None}
    refused = {t for t, v in expected.items() if v is None}
    if own is None:
        refused.add(CLIENT_IDS)
    assert {r.template for r in decision.refused} == refused
    for template, topic in expected.items():
        if topic is None:
            continue
        validate_filter(topic)
        # The wildcards and levels of a granted topic are exactly the template's own.
        literal_text = "".join(p for p in parse_template(template).parts if isinstance(p, str))
        for ch in "+#/":
            assert topic.count(ch) == literal_text.count(ch), (template, topic)
        if not template.startswith("$"):
            assert not topic.startswith("$")
    assert decision.read == decision.write == normalize(match.topics)
    for refusal in decision.refused:  # reasons go to logs: ASCII and bounded whatever the input
        assert refusal.reason.isascii()
        assert len(refusal.reason) < 400


_LEVEL = st.sampled_from(["alerts", "devices", "alice", "bob", "fleet", "t1", "status", "+", ""])


@st.composite
def _filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(_LEVEL, min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "x"


ALICE = evaluate(
    parse_policy(ISSUE_EXAMPLE, "example.yaml"), "alice", {"groups": ["ops"], "tenant": "t1"}
)


def _within(decision: Decision, narrowed: Decision) -> None:
    for action in ("R", "W"):
        resources = narrowed.grants(action)
        assert list(resources) == sorted(set(resources))
        assert not any(covers(a, b) for a in resources for b in resources if a != b)
        assert all(any(covers(g, r) for g in decision.grants(action)) for r in resources)
    for token in token_plan(narrowed):
        assert tuple(token.resources_param.split(",")) == token.resources


@settings(max_examples=300)
@given(
    topics=st.one_of(st.none(), st.lists(_filters(), min_size=1, max_size=8)),
    actions=st.one_of(st.none(), st.sets(st.sampled_from(["R", "W"]), min_size=1)),
)
def test_restricted_resources_are_sorted_unique_and_within_the_grants(
    topics: list[str] | None, actions: set[str] | None
) -> None:
    denied: TopicNotGranted | None = None
    try:
        narrowed = restrict(ALICE, topics, actions)
    except TopicNotGranted as err:
        denied = err
    except InvalidTopicFilter:
        return
    if denied is not None:
        topic = denied.extra["topic"]
        assert topics is not None
        assert topic in topics
        if actions is None:  # no action grants it
            assert not any(covers(g, topic) for g in ALICE.read + ALICE.write)
        else:  # the named action does not grant it
            assert not any(covers(g, topic) for g in ALICE.grants(denied.extra["action"]))
        return
    _within(ALICE, narrowed)
    if topics is not None:
        requested = set(topics)
        assert set(narrowed.read) | set(narrowed.write) <= requested
        for t in requested:
            assert any(covers(r, t) for r in narrowed.read + narrowed.write)
