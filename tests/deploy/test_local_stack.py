"""The compose file's and the dev overlay's configuration, run for real without Docker or a cluster.

Gateway and emulator run as `python -m authserver ...` processes with exactly the environment
the deployment gives them; only addresses change (loopback, free ports, the test Redis) and the
policy path (the file the ConfigMap or bind mount would put there). Then the deployment's own
health checks run, and a device gets MQTT credentials from the emulator through the gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest

from authserver.settings import load_settings
from tests.deploy.helpers import (
    DEPLOY,
    DOCKERFILE,
    ROOT,
    Doc,
    dockerfile_stages,
    host_preload,
    instructions,
    load_docs,
    one,
    secret_data,
)
from tests.fixtures.redis import free_port

START_TIMEOUT = 30.0


@dataclass
class Stack:
    """What a deployment gives the two authserver processes."""

    gateway_env: dict[str, str]
    emulator_env: dict[str, str]
    policy_text: str
    # Extra health commands the deployment runs (exec form), per service.
    checks: dict[str, list[list[str]]] = field(default_factory=dict)


def compose_stack() -> Stack:
    """The services of deploy/compose.yaml."""
    (compose,) = load_docs(DEPLOY / "compose.yaml")
    services = compose["services"]
    gateway = services["gateway"]
    mount = next(v for v in gateway["volumes"] if v["type"] == "bind")
    policy_name = PurePosixPath(gateway["environment"]["AUTHSERVER_POLICY_FILE"]).name
    policy_text = ((DEPLOY / mount["source"]) / policy_name).read_text(encoding="utf-8")
    return Stack(
        gateway_env={k: str(v) for k, v in gateway["environment"].items()},
        emulator_env={k: str(v) for k, v in services["emulator"]["environment"].items()},
        policy_text=policy_text,
        checks={name: [services[name]["healthcheck"]["test"][1:]] for name in services},
    )


def gateway_only(docs: list[Doc]) -> Stack:
    """The gateway Deployment's environment and policy in a rendered kustomization."""
    gateway = one(docs, "Deployment", "authserver")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(secret_data(one(docs, "Secret", source["secretRef"]["name"])))
    policy_name = PurePosixPath(env["AUTHSERVER_POLICY_FILE"]).name
    return Stack(
        gateway_env=env,
        emulator_env={},
        policy_text=one(docs, "ConfigMap", "authserver-policy")["data"][policy_name],
    )


def dev_stack(docs: list[Doc]) -> Stack:
    """The gateway and emulator Deployments of the rendered dev overlay."""
    stack = gateway_only(docs)
    emulator = one(docs, "Deployment", "authserver-emulator")["spec"]["template"]["spec"]
    emulator_env: dict[str, str] = {}
    for entry in emulator["containers"][0]["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        value = secret_data(one(docs, "Secret", ref["name"]))[ref["key"]] if ref else entry["value"]
        emulator_env[entry["name"]] = value
    stack.emulator_env = emulator_env
    return stack


def image_healthcheck() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, which both services inherit."""
    (check,) = instructions(dockerfile_stages(DOCKERFILE)[-1], "HEALTHCHECK")
    return check.exec_form()


def clean_environ() -> dict[str, str]:
    """This process's environment without any gateway or vendor settings leaking in."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTHSERVER_", "ALIBABA_CLOUD_", "PYTHONPATH"))
    }


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test, terminated (then killed) at its end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start(
    processes: list[subprocess.Popen[bytes]], command: str, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Run `python -m authserver COMMAND` (what the image's ENTRYPOINT + args run)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "authserver", command],
            # The working tree's package, as the image's venv would hold it.
            env={**clean_environ(), **env, "PYTHONPATH": str(ROOT)},
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    processes.append(proc)
    return proc


def wait_until(
    checks: list[list[str]], env: dict[str, str], proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Run the health commands (as the container runtime would) until all pass."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
        results = [
            subprocess.run(
                [sys.executable, *check[1:]] if check[0] == "python" else check,
                env={**clean_environ(), **env},
                capture_output=True,
                timeout=10,
                check=False,
            ).returncode
            for check in checks
        ]
        if not any(results):
            return
        assert time.monotonic() < deadline, f"not healthy in time:\n{log.read_text()}"
        time.sleep(0.2)


def request_token(port: int, secret: str, issuer: str, subject: str) -> dict[str, Any]:
    """POST /v1/token as a device with an HS256 JWT of `issuer` for `subject`."""
    claims = {"iss": issuer, "sub": subject, "exp": int(time.time()) + 300}
    token = jwt.encode(claims, secret, "HS256")
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/token",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            body: dict[str, Any] = json.load(resp)
            return body
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{err.code}: {err.read().decode(errors='replace')}") from None


@pytest.mark.parametrize("which", ["compose", "k8s-dev"])
def test_deployment_config_serves_a_device(
    which: str,
    rendered: dict[str, list[Doc]],
    redis_url: str,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """The deployment's env is a working configuration: healthy, ready, and issuing tokens."""
    stack = compose_stack() if which == "compose" else dev_stack(rendered["dev"])

    emulator_port = free_port()
    emulator_env = {
        **stack.emulator_env,
        "AUTHSERVER_EMULATOR_HOST": "127.0.0.1",
        "AUTHSERVER_EMULATOR_PORT": str(emulator_port),
    }
    emulator_log = tmp_path / "emulator.log"
    emulator = start(processes, "emulator", emulator_env, emulator_log)
    emulator_checks = stack.checks.get("emulator") or [
        ["python", "-c", f"import socket; socket.create_connection(('127.0.0.1', {emulator_port}))"]
    ]
    wait_until(emulator_checks, emulator_env, emulator, emulator_log)

    policy = tmp_path / "policy" / PurePosixPath(stack.gateway_env["AUTHSERVER_POLICY_FILE"]).name
    policy.parent.mkdir()
    policy.write_text(stack.policy_text, encoding="utf-8")
    endpoint = urlsplit(stack.gateway_env["AUTHSERVER_MQTT_ENDPOINT"])
    port = free_port()
    gateway_env = {
        **stack.gateway_env,
        "AUTHSERVER_HOST": "127.0.0.1",
        "AUTHSERVER_PORT": str(port),
        "AUTHSERVER_POLICY_FILE": str(policy),
        "AUTHSERVER_REDIS_URL": redis_url,
        "AUTHSERVER_MQTT_ENDPOINT": f"{endpoint.scheme}://127.0.0.1:{emulator_port}",
        # The image's malloc, from where this machine keeps it.
        **host_preload(),
    }
    gateway_log = tmp_path / "gateway.log"
    gateway = start(processes, "serve", gateway_env, gateway_log)
    gateway_checks = [image_healthcheck(), *stack.checks.get("gateway", [])]
    wait_until(gateway_checks, gateway_env, gateway, gateway_log)
    # What the kubelet's readiness probe asks.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
        assert resp.status == 200

    env = stack.gateway_env
    answer = request_token(
        port, env["AUTHSERVER_JWT_SECRET"], env["AUTHSERVER_JWT_ISSUER"], "alice"
    )
    key_id = stack.gateway_env["ALIBABA_CLOUD_ACCESS_KEY_ID"]
    instance = stack.gateway_env["AUTHSERVER_MQTT_INSTANCE_ID"]
    assert answer["username"] == f"Token|{key_id}|{instance}"
    assert answer["instanceId"] == instance
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    (info,) = (line for line in metrics.splitlines() if line.startswith("authserver_build_info{"))
    assert 'allocator="jemalloc"' in info, info


@pytest.mark.parametrize("name", ["base", "prod"])
def test_environment_passes_settings_validation(
    name: str, rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """Overlays that cannot run here (placeholder secrets) still give a valid configuration."""
    stack = gateway_only(rendered[name])
    policy = tmp_path / PurePosixPath(stack.gateway_env["AUTHSERVER_POLICY_FILE"]).name
    policy.write_text(stack.policy_text, encoding="utf-8")
    settings = load_settings({**stack.gateway_env, "AUTHSERVER_POLICY_FILE": str(policy)})
    assert settings.port == 8080
    assert settings.host == "0.0.0.0"
    if name == "prod":
        assert (settings.redis_url or "").startswith("rediss://")
