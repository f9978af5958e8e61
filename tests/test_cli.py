"""The command line as a new user meets it: --help, policy check/explain, and the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import jwt

from tests.fixtures.gateway import EXAMPLE_POLICY
from tests.fixtures.redis import free_port

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m authserver ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "authserver", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env=env,
    )


def test_help_lists_each_command_once() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in ("serve", "demo", "emulator", "policy", "admin", "jwt"):
        [line] = [x for x in done.stdout.splitlines() if x.strip().startswith(command + " ")]
        assert line.startswith(f"  {command} ")
    assert "{serve," not in done.stdout  # argparse's own list of the choices, not repeated


def test_no_command_is_a_usage_error() -> None:
    done = run()
    assert done.returncode == 2
    assert "serve" in done.stderr
    assert done.stdout == ""


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
        body = post_token(port, device)
        assert body["username"].startswith("Token|LTAIdemo")
        assert body["username"].endswith("|post-cn-demo")
        assert {t["type"] for t in body["tokens"]} == {"R", "W"}
        # The banner's export line is all `authserver jwt` needs to mint more JWTs it accepts.
        [exports] = [x for x in lines if x.startswith("export AUTHSERVER_JWT_SECRET=")]
        env = dict(os.environ)
        for pair in exports.split()[1:]:
            name, value = pair.split("=", 1)
            env[name] = value
        minted = run("jwt", "--subject", "bob", "--claims", '{"tenant": "t2"}', env=env)
        assert minted.returncode == 0, minted.stderr
        bob = post_token(port, minted.stdout.strip())
        assert "devices/bob/#" in bob["tokens"][0]["resources"]
        minted = run("jwt", "--subject", "root", "--admin", env=env)
        assert minted.returncode == 0, minted.stderr
        admin_call = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/admin/subjects/bob/tokens",
            headers={"Authorization": f"Bearer {minted.stdout.strip()}"},
        )
        with urllib.request.urlopen(admin_call, timeout=10) as resp:  # noqa: S310
            assert resp.status == 200
        # The demo shows the admin audit trail: that call's line arrives on its output.
        for line in proc.stdout:
            if " INFO authserver.audit " in line:
                assert '"actor": "root"' in line
                break
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def post_token(port: int, device_jwt: str) -> dict[str, Any]:
    """The answer of the gateway on `port` to POST /v1/token with `device_jwt`."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/token",
        method="POST",
        headers={"Authorization": f"Bearer {device_jwt}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        body: dict[str, Any] = json.load(resp)
    return body


SECRET = "s" * 64  # HS512 wants a key as long as its hash (RFC 7518)


def test_jwt_mints_what_the_configured_verifier_accepts() -> None:
    env = {
        **os.environ,
        "AUTHSERVER_JWT_SECRET": SECRET,
        "AUTHSERVER_JWT_ISSUER": "https://login.example.test/",
        "AUTHSERVER_JWT_AUDIENCE": "mqtt",
        "AUTHSERVER_JWT_ALGORITHMS": "HS512",
        "AUTHSERVER_JWT_SUBJECT_CLAIM": "uid",
    }
    done = run(
        "jwt", "--subject", "dev-1", "--claims", '{"groups": ["ops"]}', "--lifetime", "90", env=env
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert SECRET not in done.stdout + done.stderr
    claims = jwt.decode(
        token, SECRET, algorithms=["HS512"], audience="mqtt", issuer="https://login.example.test/"
    )
    assert claims["uid"] == "dev-1"
    assert claims["groups"] == ["ops"]
    assert claims["exp"] - claims["iat"] == 90
    assert "scope" not in claims
    admin = run("jwt", "--subject", "ops", "--admin", env={**env, "AUTHSERVER_ADMIN_SCOPE": "x:y"})
    assert jwt.decode(admin.stdout.strip(), options={"verify_signature": False})["scope"] == "x:y"


def test_jwt_names_what_is_missing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSERVER_")}
    done = run("jwt", "--subject", "a", env=env)
    assert done.returncode == 2
    assert "AUTHSERVER_JWT_SECRET" in done.stderr
    done = run("jwt", "--subject", "a", env={**env, "AUTHSERVER_JWT_SECRET": SECRET})
    assert done.returncode == 2
    assert "AUTHSERVER_JWT_ISSUER" in done.stderr
    done = run(
        "jwt", "--subject", "a", "--issuer", "i", "--claims", "[1]",
        env={**env, "AUTHSERVER_JWT_SECRET": SECRET},
    )  # fmt: skip
    assert done.returncode == 2
    assert "JSON object" in done.stderr


def test_the_demo_policy_is_the_example_policy() -> None:
    packaged = REPO / "authserver" / "data" / "example-policy.yaml"
    assert packaged.read_text() == EXAMPLE_POLICY.read_text()
