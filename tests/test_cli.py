"""The command line as a new user meets it: --help, policy check/explain, and the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.fixtures.gateway import EXAMPLE_POLICY
from tests.fixtures.redis import free_port

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m authserver ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "authserver", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def test_help_lists_the_commands() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in ("serve", "demo", "emulator", "policy"):
        assert command in done.stdout


def test_unknown_command_is_a_usage_error() -> None:
    assert run("frobnicate").returncode == 2


def test_policy_check_and_explain() -> None:
    done = run("policy", "check", str(EXAMPLE_POLICY))
    assert done.returncode == 0, done.stderr
    claims = json.dumps({"sub": "alice", "groups": ["ops"], "tenant": "t1"})
    done = run("policy", "explain", str(EXAMPLE_POLICY), "--claims", claims)
    assert done.returncode == 0, done.stderr
    assert "alerts/#,broadcast/#,devices/alice/#,fleet/t1/+/status" in done.stdout


def test_policy_check_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\neveryone:\n  - topics: ['a/#/b']\n    actions: [X]\n")
    done = run("policy", "check", str(bad))
    assert done.returncode == 1
    assert "everyone[0]" in done.stdout + done.stderr


def test_demo_works_as_the_readme_says() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "authserver", "demo", "--port", str(port), "--mqtt-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("curl "):
                break
        text = "".join(lines)
        assert "DEMO" in text
        device = next(x for x in lines if x.startswith("DEVICE_JWT=")).strip().split("=", 1)[1]
        admin = next(x for x in lines if x.startswith("ADMIN_JWT="))
        assert admin
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/token",
            method="POST",
            headers={"Authorization": f"Bearer {device}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            body = json.load(resp)
        assert body["username"].startswith("Token|LTAIdemo")
        assert body["username"].endswith("|post-cn-demo")
        assert {t["type"] for t in body["tokens"]} == {"R", "W"}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_demo_policy_is_the_example_policy() -> None:
    packaged = REPO / "authserver" / "data" / "example-policy.yaml"
    assert packaged.read_text() == EXAMPLE_POLICY.read_text()
