"""The README as a newcomer pastes it: commands that run, lists that match the code."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from authserver.emulator.app import EmulatorConfig, create_emulator_app
from authserver.emulator.cli import build_parser
from authserver.web.problem import _HTTP_CODES
from tests.fixtures.redis import free_port

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def shell_blocks() -> list[str]:
    """Every ```sh block of the README."""
    return re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)


def section(title: str) -> str:
    """The text under a heading, up to the next heading of any level."""
    return README.split(f"{title}\n", 1)[1].split("\n#", 1)[0]


def test_every_command_pastes_after_the_install() -> None:
    # After the two commands the venv is not active: a bare `authserver` is "not found".
    for block in shell_blocks():
        for line in block.splitlines():
            words = line.lstrip().split()
            assert "authserver" not in words[:1], f"not pasteable: {line!r}"


def test_the_emulator_example_parses() -> None:
    [block] = [b for b in shell_blocks() if b.startswith(".venv/bin/authserver emulator --host")]
    argv = shlex.split(block.replace("\\\n", " "))[2:]
    args = build_parser(env={}).parse_args(argv)
    assert args.instance_ids == ["post-cn-local"]


def test_the_emulator_paths_are_all_listed() -> None:
    app = create_emulator_app(EmulatorConfig(access_keys={"k": "s"}, instance_ids=["i"]))
    routes = {
        f"{r.method} {r.resource.canonical}"
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/_emulator/")
        if r.method != "HEAD"
    }
    text = section("## The emulator")
    listed = set(re.findall(r"`((?:GET|POST) /_emulator/[a-z]+)`", text))
    assert listed == routes


def test_the_error_table_names_aiohttps_own_refusals() -> None:
    table = section("## API summary")
    for status, code in _HTTP_CODES.items():
        if status in {404, 405}:
            assert f"| {status} | `{code}` |" in table


def test_the_serve_recipe_runs_as_pasted() -> None:
    """The "gateway against the emulator" block, with free ports, mints and gets a token."""
    [recipe] = [b for b in shell_blocks() if "authserver serve &" in b]
    emulator_port, gateway_port = free_port(), free_port()
    script = (
        recipe.replace(".venv/bin/authserver", f"{sys.executable} -m authserver")
        .replace("post-cn-local &", f"post-cn-local --port {emulator_port} &")
        .replace("127.0.0.1:8900", f"127.0.0.1:{emulator_port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{gateway_port}")
    )
    script = (
        "set -e\n"
        f"export AUTHSERVER_HOST=127.0.0.1 AUTHSERVER_PORT={gateway_port}"
        f" AUTHSERVER_SHUTDOWN_DELAY=0 AUTHSERVER_ADMIN_URL=http://127.0.0.1:{gateway_port}\n"
        "trap 'kill %1 %2; wait' EXIT\n"
        f"{script}"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert '"username":"Token|LTAIlocal|post-cn-local"' in done.stdout
    # The admin CLI's table of alice's two tokens, listed through the minted admin JWT.
    assert re.search(r"^R +[0-9a-f]{8} ", done.stdout, flags=re.MULTILINE), done.stdout
    assert re.search(r"^W +[0-9a-f]{8} ", done.stdout, flags=re.MULTILINE), done.stdout
