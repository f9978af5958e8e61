"""ClientIds bound to the signed identity: loading, expanding, checking. Table-driven, no server."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from authserver.policy import (
    ClientIdNotAllowed,
    Policy,
    PolicyLoadError,
    allowed_client_ids,
    evaluate,
    explain,
    parse_policy,
    restrict,
)
from authserver.policy.claims import referenced_claims
from authserver.policy.cli import main
from authserver.policy.holder import PolicyHolder
from tests.policy.test_loader import ISSUE_EXAMPLE

FLEET = """\
version: 1
clientIds: ["GID_fleet@@@{sub}", "GID_fleet@@@{claims.device_id}"]
everyone:
  - topics: ["dev/{client_id}/#"]
    actions: [R, W]
groups:
  ops:
    clientIds: ["GID_ops@@@{sub}"]
    rules:
      - topics: ["ops/{client_id}/#"]
        actions: [R]
users:
  alice:
    clientIds: ["GID_alice@@@console"]
    rules:
      - topics: ["alerts/#"]
        actions: [R]
"""


@pytest.fixture(scope="module")
def fleet() -> Policy:
    return parse_policy(FLEET, "fleet.yaml")


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        parse_policy(textwrap.dedent(text), "policies/x.yaml")
    return info.value.problems


# -- loading -----------------------------------------------------------------------------


def test_lists_load_with_their_labels(fleet: Policy) -> None:
    assert fleet.client_ids is not None
    assert fleet.client_ids.label == "clientIds"
    assert [t.source for t in fleet.client_ids.templates] == [
        "GID_fleet@@@{sub}",
        "GID_fleet@@@{claims.device_id}",
    ]
    assert fleet.group_client_ids["ops"].label == "groups.ops.clientIds"
    assert fleet.user_client_ids["alice"].label == "users.alice.clientIds"
    # An entry in the mapping form names its rules by their place in the file.
    assert [r.label for r in fleet.rules] == [
        "everyone[0]",
        "groups.ops.rules[0]",
        "users.alice.rules[0]",
    ]


ACCEPTED = [
    ("a user's own list binds its {client_id}", """\
        users:
          svc:
            clientIds: ["GID_svc@@@updater-1"]
            rules:
              - {topics: ["svc/{client_id}"], actions: [W]}
        """),
    ("a group's own list binds its {client_id}", """\
        groups:
          ops:
            clientIds: ["GID_ops@@@{sub}"]
            rules:
              - {topics: ["ops/{client_id}"], actions: [W]}
        """),
    ("the top-level list binds every entry", """\
        clientIds: ["{claims.mqtt_client_id}"]
        groups:
          ops:
            - {topics: ["ops/{client_id}"], actions: [W]}
        users:
          bob:
            - {topics: ["bob/{client_id}"], actions: [W]}
        """),
    ("a literal under a group", """\
        groups:
          dashboards:
            clientIds: ["GID_dash@@@wall-1"]
            rules: []
        """),
    ("clientIds without any {client_id}", """\
        clientIds: ["GID_fleet@@@{sub}"]
        everyone:
          - {topics: ["devices/{sub}/#"], actions: [R]}
        """),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(case: str, text: str) -> None:
    parse_policy("version: 1\n" + textwrap.dedent(text), "ok.yaml")


ERRORS = [
    ("{client_id} without any list", """\
        version: 1
        everyone:
          - {topics: ["ok", "dev/{client_id}/#"], actions: [R]}
        """,
     "everyone[0].topics[1]: 'dev/{client_id}/#' uses {client_id}, but no clientIds list "
     "applies to everyone, so a device could name any clientId"),
    ("a group's list does not bind everyone", """\
        version: 1
        everyone:
          - {topics: ["dev/{client_id}"], actions: [R]}
        groups:
          ops: {clientIds: ["GID_ops@@@{sub}"], rules: []}
        """,
     "everyone[0].topics[0]: 'dev/{client_id}' uses {client_id}, but no clientIds list "
     "applies to everyone"),
    ("another entry's list does not bind a group", """\
        version: 1
        groups:
          ops:
            - {topics: ["ops/{client_id}"], actions: [R]}
        users:
          alice: {clientIds: ["GID_alice@@@console"], rules: []}
        """,
     "groups.ops[0].topics[0]: 'ops/{client_id}' uses {client_id}, but no clientIds list "
     "applies to groups.ops"),
    ("a user rule in the mapping form", """\
        version: 1
        users:
          bob:
            rules:
              - {topics: ["bob/{client_id}"], actions: [R]}
        """,
     "users.bob.rules[0].topics[0]: 'bob/{client_id}' uses {client_id}, but no clientIds "
     "list applies to users.bob"),
    ("not a list", 'version: 1\nclientIds: "GID_fleet@@@{sub}"\n',
     "clientIds: must be a non-empty list of clientId templates like ['GID_fleet@@@{sub}'], "
     "not a string (line 2)"),
    ("an empty list", "version: 1\nclientIds: []\n",
     "clientIds: must be a non-empty list of clientId templates"),
    ("not a string", "version: 1\nclientIds: [42]\n",
     "clientIds[0]: a clientId template must be a string, not a int"),
    ("{client_id} inside clientIds", 'version: 1\nclientIds: ["GID_x@@@{client_id}"]\n',
     "{client_id} cannot appear in clientIds: they say which clientIds a request may name"),
    ("an unknown variable", 'version: 1\nclientIds: ["GID_fleet@@@{user}"]\n',
     "clientIds[0]: 'GID_fleet@@@{user}': unknown template variable '{user}' "
     "(known: {sub}, {claims.NAME})"),
    ("an unclosed brace", 'version: 1\nclientIds: ["GID_fleet@@@{sub"]\n',
     "unclosed '{'"),
    ("a topic level", 'version: 1\nclientIds: ["GID_fleet@@@{sub}/x"]\n',
     "'/' cannot be part of a ClientId"),
    ("a space", 'version: 1\nclientIds: ["GID_fleet @@@{sub}"]\n',
     "' ' cannot be part of a ClientId"),
    ("a wildcard", 'version: 1\nclientIds: ["GID_fleet@@@{sub}+"]\n',
     "'+' cannot be part of a ClientId"),
    ("a look-alike letter", 'version: 1\nclientIds: ["GID_fl\u0435et@@@{sub}"]\n',
     "'\u0435' cannot be part of a ClientId"),
    ("no GroupId", 'version: 1\nclientIds: ["fleet@@@{sub}"]\n',
     "a ClientId starts with its GroupId, GID_ or GID-"),
    ("a literal for everyone", 'version: 1\nclientIds: ["GID_fleet@@@dev-1"]\n',
     "clientIds[0]: 'GID_fleet@@@dev-1' has no placeholder: every subject could use this one "
     "clientId"),
    ("an invalid literal", """\
        version: 1
        users:
          alice: {clientIds: ["GID_a@@@console"], rules: []}
        """,
     "users.alice.clientIds[0]: 'GID_a@@@console': not a valid ClientId"),
    ("a misspelt entry key", """\
        version: 1
        groups:
          ops: {clientId: ["GID_ops@@@{sub}"], rules: []}
        """,
     "groups.ops.clientId: unknown key 'clientId' "
     "(expected one of: clientIds, rules, deviceCredentials); did you mean 'clientIds'?"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "expected"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_the_entry(case: str, text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("policies/x.yaml: ") for p in problems)


def test_a_broken_list_is_reported_once_not_again_as_a_missing_binding() -> None:
    problems = _problems(
        """\
        version: 1
        clientIds: [7]
        everyone:
          - {topics: ["dev/{client_id}"], actions: [R]}
        users:
          bob:
            clientIds: "GID_bob@@@x"
            rules:
              - {topics: ["bob/{client_id}"], actions: [R]}
        """
    )
    assert [p.split(": ")[1] for p in problems] == ["clientIds[0]", "users.bob.clientIds"]


def test_the_shipped_fleet_policy_binds_its_client_ids() -> None:
    path = Path(__file__).resolve().parents[2] / "policies" / "iot-fleet.yaml"
    unbound = path.read_text().replace("\nclientIds:", "\n# clientIds:")
    problems = _problems(unbound)
    assert len(problems) == 3  # the three topics naming {client_id}
    assert all("uses {client_id}, but no clientIds list applies to everyone" in p for p in problems)


# -- expanding ---------------------------------------------------------------------------

# subject, claims -> the clientIds it may use, how many expansions were refused
EXPANSIONS: list[tuple[str, dict[str, Any], tuple[str, ...], int]] = [
    ("dev1", {}, ("GID_fleet@@@dev1",), 1),  # no device_id claim
    ("dev1", {"device_id": "d-9"}, ("GID_fleet@@@dev1", "GID_fleet@@@d-9"), 0),
    ("dev1", {"device_id": "dev1"}, ("GID_fleet@@@dev1",), 0),  # the same one once
    ("dev1", {"device_id": 42}, ("GID_fleet@@@dev1", "GID_fleet@@@42"), 0),  # like topics
    ("dev1", {"device_id": "a.b:c_d-e"}, ("GID_fleet@@@dev1", "GID_fleet@@@a.b:c_d-e"), 0),
    ("dev1", {"device_id": ["d-1", "d-2"]}, ("GID_fleet@@@dev1",), 1),  # a list is no value
    ("dev1", {"device_id": {"id": "d-1"}}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": True}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": 1.5}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": ""}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": "d@@@x"}, ("GID_fleet@@@dev1",), 1),  # no second separator
    ("dev1", {"device_id": "d-1 "}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": " d-1"}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": "d\u0435v"}, ("GID_fleet@@@dev1",), 1),  # Cyrillic e
    ("dev1", {"device_id": "d\uff11"}, ("GID_fleet@@@dev1",), 1),  # fullwidth 1
    ("dev1", {"device_id": "\u212a"}, ("GID_fleet@@@dev1",), 1),  # Kelvin sign, not K
    ("dev1", {"device_id": "+"}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": "#"}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": "a/b"}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": "a\x00"}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": "$SYS"}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": "a\n"}, ("GID_fleet@@@dev1",), 1),
    ("dev1", {"device_id": "x" * 65}, ("GID_fleet@@@dev1",), 1),  # a DeviceId is 1..64
    ("alice@example.com", {}, (), 2),  # '@' is no DeviceId character
    ("DEV1", {"device_id": "dev1"}, ("GID_fleet@@@DEV1", "GID_fleet@@@dev1"), 0),
    ("op1", {"groups": ["ops"]}, ("GID_fleet@@@op1", "GID_ops@@@op1"), 1),
    ("op1", {"groups": "ops"}, ("GID_fleet@@@op1", "GID_ops@@@op1"), 1),
    # The union, in policy order: top level, groups, the user's own.
    ("alice", {"groups": ["ops"], "device_id": "a-1"},
     ("GID_fleet@@@alice", "GID_fleet@@@a-1", "GID_ops@@@alice", "GID_alice@@@console"), 0),
    ("bob", {"groups": ["nope"], "device_id": "b-1"}, ("GID_fleet@@@bob", "GID_fleet@@@b-1"), 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("subject", "claims", "allowed", "refused"),
    EXPANSIONS,
    ids=[f"{e[0][:12]}-{e[1]!r:.30}" for e in EXPANSIONS],
)
def test_expansions(
    fleet: Policy, subject: str, claims: dict[str, Any], allowed: tuple[str, ...], refused: int
) -> None:
    found, refusals = allowed_client_ids(fleet, subject, claims)
    assert found == allowed
    assert len(refusals) == refused, refusals
    for refusal in refusals:  # reasons go to explanations and logs: ASCII and bounded
        assert refusal.rule.startswith(("clientIds[", "groups.ops.clientIds["))
        assert refusal.reason.isascii()
        assert len(refusal.reason) < 300
    decision = evaluate(fleet, subject, claims)
    assert decision.client_ids == allowed


# -- checking a request ------------------------------------------------------------------

DEVICE = ("dev1", {"device_id": "d-9"})
# requested clientId -> allowed?
REQUESTS = [
    ("GID_fleet@@@dev1", True),
    ("GID_fleet@@@d-9", True),
    (None, True),
    ("GID_fleet@@@dev2", False),  # another device
    ("GID_FLEET@@@dev1", False),  # case
    ("GID_fleet@@@DEV1", False),
    ("GID-fleet@@@dev1", False),  # GID- for GID_
    ("GID_fleet@@@dev1 ", False),
    (" GID_fleet@@@dev1", False),
    ("GID_fleet@@@d\u0435v1", False),
    ("GID_fleet@@@dev1@@@x", False),
    ("GID_ops@@@dev1", False),  # a group's clientId, not being in the group
    ("GID_alice@@@console", False),  # a user's clientId, not being that user
    ("", False),
]


@pytest.mark.parametrize(("client_id", "allowed"), REQUESTS)
def test_only_an_expansion_is_allowed(fleet: Policy, client_id: str | None, allowed: bool) -> None:
    decision = evaluate(fleet, *DEVICE, client_id)
    assert decision.client_id_allowed is allowed
    if client_id is None:  # asks for no clientId: {client_id} stands for none
        assert decision.read == ()
        return
    if allowed:
        assert restrict(decision, None, None).read == (f"dev/{client_id}/#",)
        return
    # {client_id} never stood for it, even before the request is refused.
    assert decision.read == decision.write == ()
    assert any("not one this identity may use" in r.reason for r in decision.refused)
    with pytest.raises(ClientIdNotAllowed) as info:
        restrict(decision, None, None)
    assert info.value.status == 403
    assert info.value.code == "client_id_not_allowed"
    assert info.value.extra == {"field": "clientId"}
    # The detail never tells a prober which clientIds would have been accepted.
    assert "d-9" not in info.value.detail
    assert "GID_fleet@@@dev1" not in info.value.detail.replace(repr(client_id), "")


def test_a_policy_without_client_ids_allows_none() -> None:
    policy = parse_policy(ISSUE_EXAMPLE, "example.yaml")
    assert restrict(evaluate(policy, "bob", {}, None), None, None).read
    with pytest.raises(ClientIdNotAllowed):
        restrict(evaluate(policy, "bob", {}, "GID_fleet@@@bob"), None, None)


def test_the_client_id_check_comes_before_the_topics(fleet: Policy) -> None:
    # A probe with a topic outside the grants learns nothing about the topics first.
    with pytest.raises(ClientIdNotAllowed):
        restrict(evaluate(fleet, *DEVICE, "GID_fleet@@@dev2"), ["dev/GID_fleet@@@dev2/#"], None)


def test_explain_shows_the_client_ids(fleet: Policy) -> None:
    report = explain(fleet, "dev1", {"device_id": "d-9"}, "GID_fleet@@@dev2")
    assert report["clientIds"] == ["GID_fleet@@@dev1", "GID_fleet@@@d-9"]
    assert report["clientIdAllowed"] is False
    assert explain(fleet, "dev1", {}, None)["clientIdAllowed"] is None
    refused = explain(fleet, "dev1", {"device_id": ["x"]})["refused"]
    assert refused == [
        {
            "rule": "clientIds[1]",
            "template": "GID_fleet@@@{claims.device_id}",
            "reason": "{claims.device_id}: claim 'device_id' is list, not a string",
        },
        {
            "rule": "everyone[0]",
            "template": "dev/{client_id}/#",
            "reason": "{client_id}: client id is missing",
        },
    ]


# -- what answers are cached under -------------------------------------------------------


def test_client_ids_claims_are_part_of_the_claims_key(fleet: Policy, tmp_path: Path) -> None:
    assert "device_id" in referenced_claims(fleet)
    holder = PolicyHolder(tmp_path / "fleet.yaml", fleet)
    mine = {"sub": "s", "device_id": "d-1"}
    theirs = {"sub": "s", "device_id": "d-2"}
    assert holder.claims_key(mine) != holder.claims_key(theirs)
    plan = holder.plan("s", mine, "GID_fleet@@@d-1", None, None)
    assert plan.read == ("dev/GID_fleet@@@d-1/#",)
    assert plan.claims["device_id"] == "d-1"  # kept with the tokens, for narrowing
    # The same subject, request and topics, another device: never the cached plan.
    with pytest.raises(ClientIdNotAllowed):
        holder.plan("s", theirs, "GID_fleet@@@d-1", None, None)
    assert holder.client_ids("s", mine) == ("GID_fleet@@@s", "GID_fleet@@@d-1")
    assert holder.client_ids("s", theirs) == ("GID_fleet@@@s", "GID_fleet@@@d-2")


def test_a_swap_recomputes_the_client_ids(fleet: Policy, tmp_path: Path) -> None:
    holder = PolicyHolder(tmp_path / "fleet.yaml", fleet)
    claims = {"device_id": "d-1"}
    assert holder.client_ids("s", claims) == ("GID_fleet@@@s", "GID_fleet@@@d-1")
    holder.swap(parse_policy(FLEET.replace("GID_fleet@@@{sub}", "GID_other@@@{sub}"), "b.yaml"))
    assert holder.client_ids("s", claims) == ("GID_other@@@s", "GID_fleet@@@d-1")


# -- the command line --------------------------------------------------------------------


def test_cli_explain_lists_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    claims = json.dumps({"sub": "dev1", "device_id": "d-9"})
    assert main(["explain", str(path), "--claims", claims]) == 0
    out = capsys.readouterr().out
    assert "clientIds this identity may use: GID_fleet@@@dev1, GID_fleet@@@d-9" in out
    assert main(["explain", str(path), "--claims", claims, "--client-id", "GID_fleet@@@d-9"]) == 0
    out = capsys.readouterr().out
    assert "client id 'GID_fleet@@@d-9': allowed" in out
    assert "dev/GID_fleet@@@d-9/#" in out
    assert main(["explain", str(path), "--claims", claims, "--client-id", "GID-fleet@@@d-9"]) == 0
    out = capsys.readouterr().out
    assert "client id 'GID-fleet@@@d-9': NOT ALLOWED" in out
    assert "dev/GID-fleet@@@d-9/#" not in out
    assert main(["explain", str(path), "--claims", claims, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clientIds"] == ["GID_fleet@@@dev1", "GID_fleet@@@d-9"]


def test_cli_check_refuses_an_unbound_client_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unbound.yaml"
    path.write_text("version: 1\neveryone:\n  - {topics: ['dev/{client_id}/#'], actions: [R]}\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"INVALID {path}: 1 problem(s)" in err
    assert "everyone[0].topics[0]: 'dev/{client_id}/#' uses {client_id}" in err
    path.write_text(FLEET)
    assert main(["check", str(path)]) == 0
    assert "4 clientIds template(s)" in capsys.readouterr().out


def test_the_readme_example_loads_and_means_what_it_says() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### ClientIds") :]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy("version: 1\n" + block, "README.md")
    assert allowed_client_ids(policy, "svc-firmware", {"device_id": "d-1"})[0] == (
        "GID_users@@@svc-firmware",
        "GID_fleet@@@d-1",
        "GID_firmware@@@updater-1",
    )
