"""``authserver policy check|explain`` run through main(argv), output captured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authserver.policy.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "policies" / "example.yaml")
ALICE = json.dumps({"sub": "alice", "groups": ["ops"], "tenant": "t1"})


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {EXAMPLE} (version ")
    assert "4 rule(s); everyone 2, 1 group(s), 1 user(s); 0 clientIds template(s); " in out
    assert "groups claim 'groups'" in out
    assert "ttl 3600s, max 3600s" in out


def test_check_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nusers:\n  ops:\n    - {topics: ['a/#/b', 'd/{who}'], actions: [X]}\n",
        encoding="utf-8",
    )
    assert main(["check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"INVALID {bad}: 3 problem(s)"
    assert lines[1].startswith(f"  {bad}: users.ops[0].topics[0]: 'a/#/b': invalid topic filter")
    assert "users.ops[0].topics[1]: 'd/{who}': unknown template variable '{who}'" in lines[2]
    assert "users.ops[0].actions: unknown action 'X'" in lines[3]


def test_check_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "/nonexistent/p.yaml"]) == 1
    assert "/nonexistent/p.yaml: cannot read" in capsys.readouterr().err


def test_explain_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", EXAMPLE, "--claims", ALICE, "--client-id", "GID_a@@@1"]) == 0
    out = capsys.readouterr().out
    assert "subject  'alice'  client id 'GID_a@@@1'" in out
    assert "groups.ops[0]            R    fleet/t1/+/status" in out
    assert "  Actions=R Resources=alerts/#,broadcast/#,devices/alice/#,fleet/t1/+/status" in out
    assert "  Actions=W Resources=devices/alice/#" in out
    assert "refused" not in out


def test_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", EXAMPLE, "--claims", ALICE, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [t["resources"] for t in report["tokens"]] == [
        "alerts/#,broadcast/#,devices/alice/#,fleet/t1/+/status",
        "devices/alice/#",
    ]


def test_explain_subject_option_claims_file_and_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"groups": "ops", "tenant": "+"}), encoding="utf-8")
    assert main(["explain", EXAMPLE, "--claims", f"@{claims}", "--subject", "#"]) == 0
    out = capsys.readouterr().out
    assert "refused:" in out
    assert "{sub}: subject value '#' contains the MQTT wildcard '#'" in out
    assert "claim 'tenant' value '+' contains the MQTT wildcard '+'" in out
    assert "  Actions=R Resources=broadcast/#" in out


def test_explain_nothing_granted_and_too_broad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nusers:\n  a:\n    - {topics: [x, y, z], actions: [R, W]}\n", encoding="utf-8"
    )
    assert main(["explain", str(policy), "--claims", '{"sub": "b"}']) == 0
    assert "none: the policy grants nothing (default deny)" in capsys.readouterr().out
    assert main(["explain", str(policy), "--claims", '{"sub": "a"}', "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "  Actions=R,W Resources=x,y,z" in out
    assert "TOO BROAD: R would carry 3 resources (limit 2); users.a[0] contributed 3" in out


USAGE = [
    ([], "required: command"),
    (["frobnicate"], "invalid choice"),
    (["check"], "required: file"),
    (["explain", EXAMPLE], "required: --claims"),
    (["explain", EXAMPLE, "--claims", "{"], "--claims: not valid JSON"),
    (["explain", EXAMPLE, "--claims", "[1]"], "--claims: must be a JSON object"),
    (["explain", EXAMPLE, "--claims", "@/nonexistent.json"], "--claims: cannot read"),
    (["explain", EXAMPLE, "--claims", "{}"], "no subject: give --subject"),
    (["explain", EXAMPLE, "--claims", '{"sub": 5}'], "no subject"),
]


@pytest.mark.parametrize(("argv", "message"), USAGE)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "usage: authserver policy" in capsys.readouterr().out
