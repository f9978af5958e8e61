"""Loading policy files: the issue's example as written, every shipped example, every error."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from authserver.policy import Policy, PolicyLoadError, load_policy, parse_policy
from authserver.policy.loader import parse_template
from authserver.policy.model import Template, Var

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"

# The issue's example, exactly as written there (comments and alignment included).
ISSUE_EXAMPLE = """\
version: 1
defaults:
  ttlSeconds: 3600          # token lifetime unless a request asks for less
groupsClaim: groups         # the JWT claim whose values select entries under `groups`
everyone:                   # every authenticated subject
  - topics: ["devices/{sub}/#"]
    actions: [R, W]
  - topics: ["broadcast/#"]
    actions: [R]
groups:
  ops:
    - topics: ["fleet/{claims.tenant}/+/status"]
      actions: [R]
users:                      # by the JWT subject
  alice:
    - topics: ["alerts/#"]
      actions: [R]
"""


def test_issue_example_is_accepted_exactly_as_written() -> None:
    policy = parse_policy(ISSUE_EXAMPLE, "issue.yaml")
    assert policy.ttl_seconds == 3600
    assert policy.max_ttl_seconds == 3600
    assert policy.groups_claim == "groups"
    assert [r.label for r in policy.rules] == [
        "everyone[0]",
        "everyone[1]",
        "groups.ops[0]",
        "users.alice[0]",
    ]
    assert policy.everyone[0].topics[0] == Template(
        "devices/{sub}/#", ("devices/", Var("sub"), "/#")
    )
    assert policy.everyone[0].actions == frozenset({"R", "W"})
    assert policy.version_id == hashlib.sha256(ISSUE_EXAMPLE.encode()).hexdigest()[:12]


def test_shipped_example_is_the_issue_example() -> None:
    assert (POLICIES / "example.yaml").read_text(encoding="utf-8") == ISSUE_EXAMPLE


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_policy_loads(path: Path) -> None:
    policy = load_policy(path)
    assert isinstance(policy, Policy)
    assert policy.rules
    assert policy.version_id == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_there_are_several_shipped_policies() -> None:
    assert len(list(POLICIES.glob("*.yaml"))) >= 3


def test_version_id_follows_the_bytes() -> None:
    a = parse_policy(ISSUE_EXAMPLE, "a.yaml")
    b = parse_policy(ISSUE_EXAMPLE + "# a comment\n", "a.yaml")
    assert a.version_id != b.version_id
    assert len(a.version_id) == 12


def test_minimal_policy_gets_defaults() -> None:
    policy = parse_policy("version: 1\n", "min.yaml")
    assert (policy.ttl_seconds, policy.max_ttl_seconds, policy.groups_claim) == (
        3600,
        3600,
        "groups",
    )
    assert policy.rules == ()


def test_max_ttl_and_empty_sections() -> None:
    policy = parse_policy(
        "version: 1\ndefaults: {ttlSeconds: 60, maxTtlSeconds: 2592000}\n"
        "everyone:\ngroups:\nusers: {}\n",
        "p.yaml",
    )
    assert (policy.ttl_seconds, policy.max_ttl_seconds) == (60, 2592000)


def _problems(text: str, source: str = "policies/x.yaml") -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        parse_policy(textwrap.dedent(text), source)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


ERRORS = [
    (
        "unknown top-level key",
        "version: 1\nuser:\n  alice: []\n",
        "policies/x.yaml: user: unknown key 'user' (expected one of: version, defaults, "
        "groupsClaim, clientIds, everyone, groups, users); did you mean 'users'? (line 2)",
    ),
    (
        "bad action",
        """\
        version: 1
        groups:
          ops:
            - topics: [a]
              actions: [R, X]
        """,
        "policies/x.yaml: groups.ops[0].actions: unknown action 'X' at position 1 "
        "(expected R or W) (line 5)",
    ),
    (
        "lowercase action",
        "version: 1\neveryone:\n  - {topics: [a], actions: [r]}\n",
        "everyone[0].actions: unknown action 'r'",
    ),
    (
        "bad topic filter",
        "version: 1\nusers:\n  alice:\n    - {topics: [ok, 'a/#/b'], actions: [R]}\n",
        "policies/x.yaml: users.alice[0].topics[1]: 'a/#/b': invalid topic filter: "
        "topic filter 'a/#/b': '#' must be the last level (line 4)",
    ),
    (
        "wildcard glued to a placeholder",
        "version: 1\neveryone:\n  - {topics: ['a/{sub}+'], actions: [R]}\n",
        "everyone[0].topics[0]: 'a/{sub}+': invalid topic filter: "
        "topic filter 'a/{sub}+': '+' must occupy a whole level",
    ),
    (
        "comma in a topic",
        "version: 1\neveryone:\n  - {topics: ['a,b'], actions: [R]}\n",
        "everyone[0].topics[0]: 'a,b': invalid topic filter: topic filter 'a,b' contains a comma",
    ),
    (
        "unknown template variable",
        "version: 1\neveryone:\n  - {topics: ['devices/{user}/#'], actions: [R]}\n",
        "policies/x.yaml: everyone[0].topics[0]: 'devices/{user}/#': unknown template "
        "variable '{user}' (known: {sub}, {client_id}, {claims.NAME}) (line 3)",
    ),
    (
        "empty claim name",
        "version: 1\neveryone:\n  - {topics: ['d/{claims.}'], actions: [R]}\n",
        "unknown template variable '{claims.}'",
    ),
    (
        "unclosed brace",
        "version: 1\neveryone:\n  - {topics: ['d/{sub'], actions: [R]}\n",
        "unclosed '{'",
    ),
    (
        "stray brace",
        "version: 1\neveryone:\n  - {topics: ['d/sub}'], actions: [R]}\n",
        "unmatched '}'",
    ),
    (
        "unknown rule key",
        "version: 1\neveryone:\n  - {topic: [a], actions: [R]}\n",
        "policies/x.yaml: everyone[0].topic: unknown key 'topic' (expected one of: topics, "
        "actions); did you mean 'topics'? (line 3)",
    ),
    ("missing topics", "version: 1\neveryone:\n  - {actions: [R]}\n", "missing key 'topics'"),
    (
        "per-rule ttl is not a thing",
        "version: 1\neveryone:\n  - {topics: [a], actions: [R], ttlSeconds: 60}\n",
        "everyone[0].ttlSeconds: unknown key 'ttlSeconds'",
    ),
    (
        "topics not a list",
        "version: 1\neveryone:\n  - {topics: a/b, actions: [R]}\n",
        "everyone[0].topics: must be a non-empty list of topic filters, not a string",
    ),
    (
        "empty topics",
        "version: 1\neveryone:\n  - {topics: [], actions: [R]}\n",
        "everyone[0].topics: must be a non-empty list",
    ),
    (
        "topic not a string",
        "version: 1\neveryone:\n  - {topics: [12], actions: [R]}\n",
        "everyone[0].topics[0]: a topic filter must be a string, not a int",
    ),
    (
        "actions not a list",
        "version: 1\neveryone:\n  - {topics: [a], actions: RW}\n",
        "everyone[0].actions: must be a non-empty list like [R] or [R, W], not a string",
    ),
    (
        "rule not a mapping",
        "version: 1\neveryone:\n  - devices/#\n",
        "everyone[0]: a rule must be a mapping with topics and actions, not a string",
    ),
    ("section not a list", "version: 1\neveryone: {a: 1}\n", "everyone: must be a list of rules"),
    ("groups not a mapping", "version: 1\ngroups: [ops]\n", "groups: must be a mapping of"),
    (
        "numeric user name",
        "version: 1\nusers:\n  1234:\n    - {topics: [a], actions: [R]}\n",
        "users.1234: a user name must be a non-empty string, not a int 1234 (quote it in YAML)",
    ),
    ("version missing", "everyone: []\n", "policies/x.yaml: version: missing; write 'version: 1'"),
    ("version 2", "version: 2\n", "version: unsupported version 2; this gateway reads version 1"),
    ("version as text", "version: '1'\n", "unsupported version '1'"),
    ("version true", "version: true\n", "unsupported version True"),
    ("version float", "version: 1.0\n", "unsupported version 1.0"),
    ("control character", "version: 1\x01\n", "policies/x.yaml: invalid YAML"),
    (
        "ttl too short",
        "version: 1\ndefaults: {ttlSeconds: 59}\n",
        "policies/x.yaml: defaults.ttlSeconds: 59 is outside [60, 2592000] seconds (30 days)",
    ),
    (
        "ttl too long",
        "version: 1\ndefaults: {maxTtlSeconds: 2592001}\n",
        "defaults.maxTtlSeconds: 2592001 is outside [60, 2592000]",
    ),
    (
        "ttl not a number",
        "version: 1\ndefaults: {ttlSeconds: 1h}\n",
        "defaults.ttlSeconds: must be a whole number of seconds, not a string",
    ),
    (
        "max below ttl",
        "version: 1\ndefaults: {ttlSeconds: 600, maxTtlSeconds: 300}\n",
        "defaults.maxTtlSeconds: 300 is less than defaults.ttlSeconds (600)",
    ),
    (
        "unknown defaults key",
        "version: 1\ndefaults: {ttl: 600}\n",
        "defaults.ttl: unknown key 'ttl'",
    ),
    (
        "groupsClaim not a string",
        "version: 1\ngroupsClaim: [a]\n",
        "groupsClaim: must be a non-empty claim name, not a list",
    ),
    (
        "duplicate key",
        "version: 1\nusers:\n  alice:\n    - {topics: [a], actions: [R]}\n"
        "  alice:\n    - {topics: [b], actions: [R]}\n",
        "policies/x.yaml: users.alice: duplicate key (YAML would silently keep only the last one)",
    ),
    ("not a mapping", "- a\n- b\n", "(top level): a policy must be a mapping starting with"),
    ("empty file", "", "(top level): a policy must be a mapping starting with 'version: 1', not n"),
    ("bad YAML", "version: 1\neveryone: [\n", "policies/x.yaml: line 3: invalid YAML"),
]


@pytest.mark.parametrize(("case", "text", "expected"), ERRORS, ids=[e[0] for e in ERRORS])
def test_each_error_names_file_entry_and_problem(case: str, text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("policies/x.yaml: ") for p in problems)


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(
        """\
        version: 2
        defaults: {ttlSeconds: 5}
        colour: blue
        everyone:
          - topics: ["devices/{user}/#", "a/#/b"]
            actions: [R, X]
        groups:
          ops:
            - {topics: [ok], actions: [W]}
            - {topics: [fine], acts: [W]}
        """
    )
    assert [p.split(": ")[1] for p in problems] == [
        "colour",
        "version",
        "defaults.ttlSeconds",
        "everyone[0].topics[0]",
        "everyone[0].topics[1]",
        "everyone[0].actions",
        "groups.ops[1].acts",
        "groups.ops[1]",
    ]


def test_load_policy_reports_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"version: 1\n# caf\xe9\n")
    with pytest.raises(PolicyLoadError, match=r"latin1\.yaml: not valid UTF-8 at byte 16"):
        load_policy(bad)


TEMPLATES = [
    ("a/b", ("a/b",)),
    ("devices/{sub}/#", ("devices/", Var("sub"), "/#")),
    ("{sub}", (Var("sub"),)),
    ("d/{sub}-{client_id}/x", ("d/", Var("sub"), "-", Var("client_id"), "/x")),
    ("t/{claims.tenant}", ("t/", Var("claims.tenant"))),
    ("t/{claims.https://x.io/t}", ("t/", Var("claims.https://x.io/t"))),
    ("lit/{{sub}}/x", ("lit/{sub}/x",)),
]


@pytest.mark.parametrize(("text", "parts"), TEMPLATES)
def test_templates(text: str, parts: tuple[object, ...]) -> None:
    assert parse_template(text).parts == parts
