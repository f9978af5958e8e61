"""Evaluating, restricting, limiting and explaining a policy: table-driven, no server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authserver.errors import BadRequest, GrantTooBroad, PolicyDenied
from authserver.policy import (
    Decision,
    Policy,
    TokenRequest,
    TopicNotGranted,
    check_limits,
    evaluate,
    explain,
    parse_policy,
    restrict,
    token_plan,
)
from authserver.topics import InvalidTopicFilter
from tests.policy.test_loader import ISSUE_EXAMPLE


@pytest.fixture(scope="module")
def example() -> Policy:
    return parse_policy(ISSUE_EXAMPLE, "policies/example.yaml")


def _policy(body: str) -> Policy:
    return parse_policy("version: 1\n" + body, "test.yaml")


def test_worked_example_alice(example: Policy) -> None:
    d = evaluate(example, "alice", {"groups": ["ops"], "tenant": "t1"})
    assert d.read == ("alerts/#", "broadcast/#", "devices/alice/#", "fleet/t1/+/status")
    assert d.write == ("devices/alice/#",)
    assert token_plan(d) == (
        TokenRequest("R", ("alerts/#", "broadcast/#", "devices/alice/#", "fleet/t1/+/status")),
        TokenRequest("W", ("devices/alice/#",)),
    )
    assert [t.resources_param for t in token_plan(d)] == [
        "alerts/#,broadcast/#,devices/alice/#,fleet/t1/+/status",
        "devices/alice/#",
    ]
    assert [m.rule for m in d.matched] == [
        "everyone[0]",
        "everyone[1]",
        "groups.ops[0]",
        "users.alice[0]",
    ]
    assert d.refused == ()
    assert d.ttl_seconds == d.max_ttl_seconds == 3600
    assert d.policy_version == example.version_id


def test_worked_example_bob(example: Policy) -> None:
    d = evaluate(example, "bob", {})
    assert d.read == ("broadcast/#", "devices/bob/#")
    assert d.write == ("devices/bob/#",)
    assert [m.rule for m in d.matched] == ["everyone[0]", "everyone[1]"]


def test_groups_need_the_claim_and_users_need_the_exact_subject(example: Policy) -> None:
    d = evaluate(example, "Alice", {"tenant": "t1"})
    assert d.read == ("broadcast/#", "devices/Alice/#")


def test_default_deny() -> None:
    policy = _policy("users:\n  alice:\n    - {topics: [a], actions: [R]}\n")
    d = evaluate(policy, "bob", {"groups": ["ops"]})
    assert d.is_empty
    assert token_plan(d) == ()
    with pytest.raises(PolicyDenied, match="grants nothing to subject 'bob'"):
        restrict(d, None, None)


def test_equal_sets_make_one_read_write_token() -> None:
    policy = _policy("everyone:\n  - {topics: ['d/{sub}/#', 'b/+'], actions: [W, R]}\n")
    d = evaluate(policy, "x", {})
    assert token_plan(d) == (TokenRequest("R,W", ("b/+", "d/x/#")),)


def test_covered_topics_are_dropped_across_rules() -> None:
    policy = _policy(
        "everyone:\n  - {topics: ['a/b/+', 'a/c'], actions: [R]}\n"
        "groups:\n  g:\n    - {topics: ['a/#'], actions: [R]}\n"
    )
    assert evaluate(policy, "s", {}).read == ("a/b/+", "a/c")
    d = evaluate(policy, "s", {"groups": ["g"]})
    assert d.read == ("a/#",)
    assert d.granted_by("R", "a/#") == ("groups.g[0]",)


GROUP_CLAIMS: list[tuple[object, tuple[str, ...], int]] = [
    (["ops"], ("fleet/t1/+/status",), 0),
    ("ops", ("fleet/t1/+/status",), 0),
    ("admin ops", ("fleet/t1/+/status",), 0),  # one string: whitespace-separated names
    ("admin,ops", (), 0),  # commas do not separate
    (["ops", 7, None], ("fleet/t1/+/status",), 2),
    ({"ops": True}, (), 1),
    (7, (), 1),
    ([], (), 0),
]


@pytest.mark.parametrize(("claim", "extra", "refusals"), GROUP_CLAIMS)
def test_groups_claim_shapes(
    example: Policy, claim: object, extra: tuple[str, ...], refusals: int
) -> None:
    d = evaluate(example, "bob", {"groups": claim, "tenant": "t1"})
    assert d.read == tuple(sorted(("broadcast/#", "devices/bob/#", *extra)))
    assert len(d.refused) == refusals
    assert all(r.rule == "groupsClaim" for r in d.refused)


def test_groups_claim_name_comes_from_the_policy() -> None:
    policy = _policy("groupsClaim: roles\ngroups:\n  ops:\n    - {topics: [x], actions: [R]}\n")
    assert evaluate(policy, "s", {"groups": ["ops"]}).is_empty
    assert evaluate(policy, "s", {"roles": ["ops"]}).read == ("x",)


TEMPLATE_POLICY = """\
clientIds: ["GID_app@@@{claims.dev}"]
everyone:
  - topics: ["d/{sub}/#", "c/{client_id}/in", "t/{claims.tenant}/x", "m/{sub}-{claims.n}"]
    actions: [R]
  - topics: ["{sub}/own", "lit/{{sub}}"]
    actions: [W]
"""

# subject, claims, client id -> read set, write set, number of refusals (the clientIds
# template counts as one when the dev claim is missing)
EXPANSIONS: list[tuple[str, dict[str, Any], str | None, tuple[str, ...], tuple[str, ...], int]] = [
    (
        "u1",
        {"tenant": "t1", "n": 7, "dev": "d1"},
        "GID_app@@@d1",
        ("c/GID_app@@@d1/in", "d/u1/#", "m/u1-7", "t/t1/x"),
        ("lit/{sub}", "u1/own"),
        0,
    ),
    ("u1", {}, None, ("d/u1/#",), ("lit/{sub}", "u1/own"), 4),  # missing claims and client id
    ("#", {"tenant": "+", "n": "a/b"}, "#", (), ("lit/{sub}",), 6),  # wildcards never expand
    ("a/b", {"tenant": "", "n": True}, "", (), ("lit/{sub}",), 6),
    ("u", {"tenant": "x\x00", "n": 1.5}, "a,b", ("d/u/#",), ("lit/{sub}", "u/own"), 4),
    ("$SYS", {"tenant": "$t", "n": "$"}, None, (), ("lit/{sub}",), 6),  # '$' starting a level
    ("..", {"tenant": "..", "n": ".."}, None, ("d/../#", "m/..-..", "t/../x"),
     ("../own", "lit/{sub}"), 2),
    ("u", {"tenant": ["t1"], "n": {"a": 1}}, None, ("d/u/#",), ("lit/{sub}", "u/own"), 4),
    ("u\ud800", {"tenant": "é🚀", "n": "\n"}, None, ("t/é🚀/x",), ("lit/{sub}",), 5),
    ("x" * 1100, {"tenant": "t"}, None, ("t/t/x",), ("lit/{sub}",), 5),
    # A clientId the identity may not use never expands, however well-formed.
    ("u1", {"dev": "d1"}, "GID_app@@@d2", ("d/u1/#",), ("lit/{sub}", "u1/own"), 3),
]  # fmt: skip


@pytest.mark.parametrize(
    ("subject", "claims", "client_id", "read", "write", "refused"),
    EXPANSIONS,
    ids=[repr(e[0])[:20] for e in EXPANSIONS],
)
def test_template_expansion(
    subject: str,
    claims: dict[str, Any],
    client_id: str | None,
    read: tuple[str, ...],
    write: tuple[str, ...],
    refused: int,
) -> None:
    d = evaluate(_policy(TEMPLATE_POLICY), subject, claims, client_id)
    assert (d.read, d.write) == (read, write)
    assert len(d.refused) == refused, d.refused


REASONS = [
    ({"tenant": "+"}, "{claims.tenant}: claim 'tenant' value '+' contains the MQTT wildcard '+'"),
    ({"tenant": "#"}, "contains the MQTT wildcard '#'"),
    ({"tenant": "a/b"}, "contains '/' (it would add topic levels)"),
    ({"tenant": "a\x00"}, "contains NUL"),
    ({"tenant": "a,b"}, "contains ',' (it would split the Resources list)"),
    ({"tenant": "a\tb"}, "contains a control character"),
    ({"tenant": ""}, "{claims.tenant}: claim 'tenant' is empty"),
    ({}, "{claims.tenant}: claim 'tenant' is missing"),
    ({"tenant": None}, "claim 'tenant' is missing"),
    ({"tenant": False}, "is a boolean, not a string"),
    ({"tenant": 2.0}, "is float, not a string"),
    ({"tenant": ["a"]}, "is list, not a string"),
    ({"tenant": "\udcff"}, "value '\\udcff' is not valid UTF-8"),
    ({"tenant": "$SYS"}, "value '$SYS' would start a topic level with '$'"),
    ({"tenant": "y" * 2000}, "the expanded topic is refused: topic filter is 2002 bytes"),
]


@pytest.mark.parametrize(("claims", "reason"), REASONS)
def test_refusal_reasons(claims: dict[str, Any], reason: str) -> None:
    policy = _policy("everyone:\n  - {topics: ['{claims.tenant}/x', ok], actions: [R]}\n")
    d = evaluate(policy, "s", claims)
    assert d.read == ("ok",)
    [refusal] = d.refused
    assert refusal.rule == "everyone[0]"
    assert refusal.template == "{claims.tenant}/x"
    assert reason in refusal.reason


def test_refusal_reason_bounds_hostile_values() -> None:
    policy = _policy("everyone:\n  - {topics: ['a/{sub}'], actions: [R]}\n")
    [refusal] = evaluate(policy, "#" + "\u202e" * 500, {}).refused
    assert len(refusal.reason) < 200
    assert refusal.reason.isascii()


def test_integer_claims_are_written_in_decimal() -> None:
    policy = _policy("everyone:\n  - {topics: ['t/{claims.n}'], actions: [R]}\n")
    assert evaluate(policy, "s", {"n": 42}).read == ("t/42",)
    assert evaluate(policy, "s", {"n": -1}).read == ("t/-1",)


def test_dollar_only_refused_where_it_would_start_a_level() -> None:
    policy = _policy("everyone:\n  - {topics: ['a-{sub}/x', '{sub}/y'], actions: [R]}\n")
    d = evaluate(policy, "$SYS", {})
    assert d.read == ("a-$SYS/x",)
    assert "would start a topic level with '$'" in d.refused[0].reason


def test_dollar_topics_written_by_the_author_are_kept() -> None:
    policy = _policy("everyone:\n  - {topics: ['$SYS/{sub}/#'], actions: [R]}\n")
    assert evaluate(policy, "u", {}).read == ("$SYS/u/#",)


# ----- restrict ---------------------------------------------------------------------------


@pytest.fixture
def alice(example: Policy) -> Decision:
    return evaluate(example, "alice", {"groups": ["ops"], "tenant": "t1"})


RESTRICTIONS: list[
    tuple[list[str] | None, list[str] | None, tuple[str, ...], tuple[str, ...]]
] = [
    (None, None, ("alerts/#", "broadcast/#", "devices/alice/#", "fleet/t1/+/status"),
     ("devices/alice/#",)),
    (None, ["R"], ("alerts/#", "broadcast/#", "devices/alice/#", "fleet/t1/+/status"), ()),
    (None, ["W"], (), ("devices/alice/#",)),
    (["devices/alice/x"], None, ("devices/alice/x",), ("devices/alice/x",)),
    (["devices/alice/x"], ["W"], (), ("devices/alice/x",)),
    (["devices/alice/x"], ["R", "W"], ("devices/alice/x",), ("devices/alice/x",)),
    # without actions, each topic goes to the actions that grant it
    (["alerts/fire", "devices/alice/+"], None, ("alerts/fire", "devices/alice/+"),
     ("devices/alice/+",)),
    (["fleet/t1/d9/status"], None, ("fleet/t1/d9/status",), ()),
    (["fleet/t1/+/status"], ["R"], ("fleet/t1/+/status",), ()),
    (["devices/alice/#", "devices/alice/a", "devices/alice/#"], None, ("devices/alice/#",),
     ("devices/alice/#",)),
    (["devices/alice"], ["W"], (), ("devices/alice",)),
]  # fmt: skip


@pytest.mark.parametrize(("topics", "actions", "read", "write"), RESTRICTIONS)
def test_restrict(
    alice: Decision,
    topics: list[str] | None,
    actions: list[str] | None,
    read: tuple[str, ...],
    write: tuple[str, ...],
) -> None:
    narrowed = restrict(alice, topics, actions)
    assert (narrowed.read, narrowed.write) == (read, write)
    assert narrowed.matched == alice.matched


DENIALS: list[tuple[Any, Any, type[Exception], str, dict[str, str]]] = [
    (["devices/bob/x"], None, TopicNotGranted,
     "topic 'devices/bob/x' is not granted to subject 'alice'", {"topic": "devices/bob/x"}),
    (["alerts/fire"], ["R", "W"], TopicNotGranted,
     "topic 'alerts/fire' is not granted for write (action W)",
     {"topic": "alerts/fire", "action": "W"}),
    (["devices/alice/x", "fleet/t2/a/status"], ["R"], TopicNotGranted,
     "'fleet/t2/a/status'", {"topic": "fleet/t2/a/status", "action": "R"}),
    (["fleet/t1/#"], None, TopicNotGranted, "'fleet/t1/#'", {"topic": "fleet/t1/#"}),
    (["#"], None, TopicNotGranted, "'#'", {"topic": "#"}),
    (["$SYS/x"], None, TopicNotGranted, "'$SYS/x'", {"topic": "$SYS/x"}),
    (["devices/alice/#/x"], None, InvalidTopicFilter, "last level", {}),
    (["devices/alice/x"], ["X"], BadRequest, "unknown action 'X'", {}),
    (["devices/alice/x"], [], BadRequest, "actions must not be empty", {}),
    (["devices/alice/x"], "RW", BadRequest, "actions must be a list", {}),
    ([], None, BadRequest, "topics must not be empty", {}),
    ([["a"]], None, InvalidTopicFilter, "must be a string, not list", {}),
    ([{"a": 1}, "devices/alice/x"], None, InvalidTopicFilter, "not dict", {}),
    ([None], None, InvalidTopicFilter, "not NoneType", {}),
    (["devices/alice/x"], [["R"]], BadRequest, "unknown action ['R']", {}),
    (["devices/alice/x"], [None], BadRequest, "unknown action None", {}),
    ("devices/alice/x", None, BadRequest, "topics must be a list", {}),
]  # fmt: skip


@pytest.mark.parametrize(("topics", "actions", "error", "message", "extra"), DENIALS)
def test_restrict_denials(
    alice: Decision,
    topics: list[str] | None,
    actions: list[str] | None,
    error: type[Exception],
    message: str,
    extra: dict[str, str],
) -> None:
    with pytest.raises(error, match=None) as info:
        restrict(alice, topics, actions)
    assert message in str(info.value)
    if isinstance(info.value, TopicNotGranted):
        assert info.value.status == 403
        assert info.value.code == "policy_denied"
        assert info.value.extra == extra


def test_restrict_denies_an_action_granted_nowhere(example: Policy) -> None:
    policy = _policy("everyone:\n  - {topics: ['a/#'], actions: [R]}\n")
    with pytest.raises(PolicyDenied, match=r"no write access \(action W\)") as info:
        restrict(evaluate(policy, "s", {}), ["a/b"], ["W"])
    assert info.value.extra == {"action": "W"}
    assert not isinstance(info.value, TopicNotGranted)


def test_restrict_checks_ten_thousand_topics_quickly(alice: Decision) -> None:
    topics = [f"devices/alice/{i}" for i in range(10_000)]
    narrowed = restrict(alice, topics, ["W"])
    assert len(narrowed.write) == 10_000
    with pytest.raises(GrantTooBroad):
        check_limits(narrowed)


# ----- limits -----------------------------------------------------------------------------


def test_check_limits_names_the_action_and_the_rules() -> None:
    many = ", ".join(f"'fleet/{i}'" for i in range(120))
    few = ", ".join(f"'misc/{i}'" for i in range(10))
    policy = _policy(
        f"everyone:\n  - {{topics: [{few}], actions: [R]}}\n"
        f"groups:\n  ops:\n    - {{topics: [{many}], actions: [R, W]}}\n"
    )
    d = evaluate(policy, "s", {"groups": ["ops"]})
    with pytest.raises(GrantTooBroad) as info:
        check_limits(d)
    assert info.value.status == 422
    assert info.value.detail == (
        "R would carry 130 resources (limit 100); "
        "groups.ops[0] contributed 120, everyone[0] contributed 10"
    )
    assert info.value.extra["action"] == "R"
    assert info.value.extra["contributors"] == {"groups.ops[0]": 120, "everyone[0]": 10}
    check_limits(d, limit=130)
    with pytest.raises(GrantTooBroad, match=r"^W would carry 120 resources \(limit 110\)"):
        check_limits(restrict(d, None, ["W"]), limit=110)


def test_check_limits_accepts_exactly_the_limit(alice: Decision) -> None:
    check_limits(alice, limit=4)
    with pytest.raises(GrantTooBroad, match="R would carry 4 resources"):
        check_limits(alice, limit=3)


# ----- explain ----------------------------------------------------------------------------


def test_explain_worked_example(example: Policy) -> None:
    report = explain(example, "alice", {"groups": ["ops", "dev"], "tenant": "t1"}, "GID_a@@@1")
    assert json.loads(json.dumps(report)) == report
    assert report["tokens"] == [
        {
            "actions": "R",
            "resources": "alerts/#,broadcast/#,devices/alice/#,fleet/t1/+/status",
            "count": 4,
        },
        {"actions": "W", "resources": "devices/alice/#", "count": 1},
    ]
    assert report["groups"] == {"claim": "groups", "values": ["ops", "dev"], "matched": ["ops"]}
    assert report["matched"][2] == {
        "rule": "groups.ops[0]",
        "actions": ["R"],
        "topics": ["fleet/t1/+/status"],
    }
    assert report["policy"] == {"source": "policies/example.yaml", "version": example.version_id}
    assert report["clientId"] == "GID_a@@@1"
    assert report["tooBroad"] is None
    assert (report["ttlSeconds"], report["maxTtlSeconds"]) == (3600, 3600)


def test_explain_shows_refusals_one_rw_token_and_too_broad() -> None:
    topics = ", ".join(f"'x/{i}'" for i in range(3))
    policy = _policy(f"everyone:\n  - {{topics: ['d/{{sub}}', {topics}], actions: [R, W]}}\n")
    report = explain(policy, "a/b", {}, limit=2)
    assert report["refused"] == [
        {
            "rule": "everyone[0]",
            "template": "d/{sub}",
            "reason": "{sub}: subject value 'a/b' contains '/' (it would add topic levels)",
        }
    ]
    assert report["tokens"] == [{"actions": "R,W", "resources": "x/0,x/1,x/2", "count": 3}]
    assert report["tooBroad"] == "R would carry 3 resources (limit 2); everyone[0] contributed 3"
