"""`authserver admin ...` against a real gateway on a real port: commands, shapes, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authserver.admin_cli import (
    EXIT_NOT_CONFIRMED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Streams,
    build_parser,
    run,
)
from authserver.clock import ManualClock
from tests.admin.conftest import API_KEY, admin_jwt
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.fixtures.redis import free_port

REPO = Path(__file__).resolve().parents[2]
ONLINE = "GID_fleet@@@dev-1"
OFFLINE = "GID_fleet@@@dev-2"


class Terminal(io.StringIO):
    """Typed answers, as from a terminal."""

    def isatty(self) -> bool:
        return True


@dataclass
class Result:
    """What one command did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """The --json answer: exactly one JSON document on one line."""
        (line,) = self.out.splitlines()
        return json.loads(line)


Admin = Callable[..., Awaitable[Result]]


@dataclass
class Gateway:
    """A gateway with an API key file, the CLI bound to it, and what the tests printed."""

    url: str
    client: Any
    key_file: Path
    printed: list[str]

    async def admin(
        self, *argv: str, stdin: io.StringIO | None = None, env: dict[str, str] | None = None
    ) -> Result:
        """`authserver admin --url URL --api-key-file F ARGV` in this process."""
        out, err = io.StringIO(), io.StringIO()
        prefix = ["--url", self.url, "--api-key-file", str(self.key_file)] if env is None else []
        code = await run([*prefix, *argv], env or {}, Streams(stdin or io.StringIO(), out, err))
        self.printed += [out.getvalue(), err.getvalue()]
        return Result(code, out.getvalue(), err.getvalue())

    async def device_tokens(self, subject: str = "alice") -> list[dict[str, Any]]:
        """Have a device of `subject` fetch its MQTT tokens."""
        resp = await self.client.post(
            "/v1/token", headers=bearer(make_jwt(subject, groups=["ops"], tenant="t1"))
        )
        assert resp.status == 200, await resp.text()
        tokens: list[dict[str, Any]] = (await resp.json())["tokens"]
        return tokens


@pytest.fixture
async def gateway(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    api_keys_file: Path,
    tmp_path: Path,
) -> Gateway:
    client = await make_gateway(emulator, admin_api_keys_file=api_keys_file)
    key_file = tmp_path / "admin-key"
    key_file.write_text(API_KEY + "\n")
    return Gateway(str(client.make_url("")).rstrip("/"), client, key_file, [])


# -- revoke ----------------------------------------------------------------------------------


async def test_revoke_refused_without_yes_when_not_at_a_terminal(gateway: Gateway) -> None:
    await gateway.device_tokens("alice")
    result = await gateway.admin("revoke", "--subject", "alice")
    assert result.code == EXIT_NOT_CONFIRMED
    assert result.out == ""
    assert result.err == (
        "authserver admin: revoke needs --yes when stdin is not a terminal; nothing was revoked\n"
    )
    tokens = await gateway.admin("--json", "tokens", "alice")
    assert len(tokens.json()["tokens"]) == 2  # nothing was revoked


async def test_revoke_asks_at_a_terminal(gateway: Gateway) -> None:
    await gateway.device_tokens("alice")
    declined = await gateway.admin("revoke", "--subject", "alice", stdin=Terminal("n\n"))
    assert declined.code == EXIT_NOT_CONFIRMED
    assert "Revoke every token of subject 'alice' and refuse its app JWTs" in declined.err
    assert f"at {gateway.url}? [y/N]" in declined.err
    assert len((await gateway.admin("--json", "tokens", "alice")).json()["tokens"]) == 2

    accepted = await gateway.admin("revoke", "--subject", "alice", stdin=Terminal("y\n"))
    assert accepted.code == EXIT_OK, accepted.err
    assert "revoked locally:" in accepted.out
    assert (await gateway.admin("--json", "tokens", "alice")).json()["tokens"] == []


async def test_revoke_subject_json(gateway: Gateway) -> None:
    await gateway.device_tokens("alice")
    result = await gateway.admin("--json", "revoke", "--subject", "alice", "--yes")
    assert result.code == EXIT_OK, result.err
    answer = result.json()
    assert set(answer) == {"revokedLocally", "queued", "blockedIssuedBefore", "fingerprints"}
    assert answer["revokedLocally"] == 2
    assert len(answer["fingerprints"]) == 2
    assert isinstance(answer["blockedIssuedBefore"], int)
    # The block refuses alice's app JWT issued before now.
    earlier = make_jwt("alice", groups=["ops"], tenant="t1", now=time.time() - 60)
    resp = await gateway.client.post("/v1/token", headers=bearer(earlier))
    assert resp.status == 401


async def test_revoke_client_id_without_block(gateway: Gateway) -> None:
    result = await gateway.admin("--json", "revoke", "--client-id", ONLINE, "--no-block", "-y")
    assert result.code == EXIT_OK, result.err
    assert result.json()["blockedIssuedBefore"] is None


async def test_revoke_one_token_from_a_file_or_stdin(gateway: Gateway, tmp_path: Path) -> None:
    first, second = await gateway.device_tokens("alice")
    token_file = tmp_path / "mqtt-token"
    token_file.write_text(first["token"] + "\n")
    by_file = await gateway.admin("--json", "revoke", "--mqtt-token-file", str(token_file), "--yes")
    assert by_file.code == EXIT_OK, by_file.err
    assert by_file.json()["revokedLocally"] == 1
    by_stdin = await gateway.admin(
        "revoke", "--mqtt-token-file", "-", "--yes", stdin=io.StringIO(second["token"])
    )
    assert by_stdin.code == EXIT_OK, by_stdin.err
    for token in (first, second):
        assert token["token"] not in by_file.out + by_stdin.out
    assert (await gateway.admin("--json", "tokens", "alice")).json()["tokens"] == []


@pytest.fixture
async def claim_gateway(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    api_keys_file: Path,
    tmp_path: Path,
) -> Gateway:
    """A gateway whose tokens can be revoked by the `tenant` claim.

    On a ManualClock that starts now and never moves by itself: a grace margin never ends
    while a test looks.
    """
    client = await make_gateway(
        emulator,
        clock=ManualClock(start=time.time()),
        admin_api_keys_file=api_keys_file,
        revocable_claims=frozenset({"tenant"}),
    )
    key_file = tmp_path / "admin-key"
    key_file.write_text(API_KEY + "\n")
    return Gateway(str(client.make_url("")).rstrip("/"), client, key_file, [])


async def test_revoke_claim_needs_confirmation(claim_gateway: Gateway) -> None:
    gateway = claim_gateway
    await gateway.device_tokens("alice")
    refused = await gateway.admin("revoke", "--claim", "tenant=t1")
    assert refused.code == EXIT_NOT_CONFIRMED
    assert refused.out == ""
    declined = await gateway.admin(
        "revoke", "--claim", "tenant=t1", "--grace-seconds", "30", stdin=Terminal("n\n")
    )
    assert declined.code == EXIT_NOT_CONFIRMED
    assert (
        "Revoke every token of the identities whose 'tenant' is 't1' and refuse its app JWTs "
        "issued before now (upstream after 30 s) at "
    ) in declined.err
    assert len((await gateway.admin("--json", "tokens", "alice")).json()["tokens"]) == 2


async def test_revoke_claim_with_grace_json_and_table(
    claim_gateway: Gateway, emulator: EmulatorHandle
) -> None:
    gateway = claim_gateway
    old = [t["token"] for t in await gateway.device_tokens("alice")]
    result = await gateway.admin(
        "--json", "revoke", "--claim", "tenant=t1", "--grace-seconds", "30", "--yes"
    )
    assert result.code == EXIT_OK, result.err
    answer = result.json()
    assert set(answer) == {
        "revokedLocally",
        "queued",
        "blockedIssuedBefore",
        "fingerprints",
        "upstreamRevocationAfter",
    }
    assert answer["revokedLocally"] == 2
    assert answer["upstreamRevocationAfter"] - answer["blockedIssuedBefore"] >= 30_000
    earlier = make_jwt("alice", groups=["ops"], tenant="t1", now=time.time() - 60)
    assert (await gateway.client.post("/v1/token", headers=bearer(earlier))).status == 401
    assert all(emulator.state.token_valid(t) for t in old)  # held back for 30 s

    queue = await gateway.admin("revocations")
    assert queue.code == EXIT_OK, queue.err
    assert re.search(r"^delayed \(grace\): +2$", queue.out, re.MULTILINE)
    table = await gateway.admin("revoke", "--claim", "tenant=t2", "--no-block", "--yes")
    assert table.code == EXIT_OK, table.err
    assert re.search(r"^revoked locally: +0$", table.out, re.MULTILINE)
    assert "revoked upstream after" not in table.out
    graced = await gateway.admin("revoke", "--subject", "bob", "--grace-seconds", "5", "--yes")
    assert "revoked upstream after:" in graced.out


@pytest.mark.parametrize(
    ("argv", "code", "err"),
    [
        (["--claim", "tenant"], EXIT_USAGE, "--claim takes NAME=VALUE"),
        (["--claim", "=t1"], EXIT_USAGE, "--claim takes NAME=VALUE"),
        (["--claim", "tenant=t1", "--device-credentials", "refresh"], EXIT_USAGE, "applies to"),
        (["--claim", "device_id=d1"], EXIT_REFUSED, "400 claim_not_revocable: claim 'device_id'"),
        (["--claim", "tenant=t1", "--grace-seconds", "9999"], EXIT_REFUSED, "400 bad_request"),
    ],
)
async def test_revoke_claim_errors(
    claim_gateway: Gateway, argv: list[str], code: int, err: str
) -> None:
    result = await claim_gateway.admin("revoke", *argv, "--yes")
    assert result.code == code, result.err
    assert err in result.err
    assert result.out == ""


# -- lookups ---------------------------------------------------------------------------------


async def test_query(gateway: Gateway, tmp_path: Path) -> None:
    (token, *_rest) = await gateway.device_tokens("alice")
    token_file = tmp_path / "mqtt-token"
    token_file.write_text(token["token"])
    result = await gateway.admin("--json", "query", "--mqtt-token-file", str(token_file))
    assert result.code == EXIT_OK, result.err
    answer = result.json()
    assert answer["valid"] is True
    assert answer["source"] == "upstream"
    assert answer["type"] == token["type"]
    table = await gateway.admin("query", "--mqtt-token-file", "-", stdin=io.StringIO("nope"))
    assert table.code == EXIT_OK, table.err
    assert table.out.splitlines()[:3] == [
        "valid:       no",
        "source:      local",
        "reason:      unknown",
    ]


async def test_tokens(gateway: Gateway) -> None:
    tokens = await gateway.device_tokens("alice")
    result = await gateway.admin("tokens", "alice")
    assert result.code == EXIT_OK, result.err
    header, *rows = result.out.splitlines()
    assert header.split() == [
        "TYPE",
        "FINGERPRINT",
        "CLIENT",
        "ID",
        "ISSUED",
        "EXPIRES",
        "RESOURCES",
    ]
    assert sorted(row.split()[0] for row in rows) == sorted(t["type"] for t in tokens)
    shape = (await gateway.admin("--json", "tokens", "alice")).json()
    assert shape["subject"] == "alice"
    assert set(shape["tokens"][0]) == {
        "type",
        "fingerprint",
        "resources",
        "expireTime",
        "issuedAt",
        "clientId",
        "shared",
    }
    # A subject with a '/' travels percent-encoded and comes back whole.
    odd = await gateway.admin("--json", "tokens", "team/bob")
    assert odd.json() == {"subject": "team/bob", "tokens": []}
    assert (await gateway.admin("tokens", "nobody")).out == "subject 'nobody' holds no live token\n"


async def test_sessions(gateway: Gateway, emulator: EmulatorHandle) -> None:
    emulator.state.set_online([ONLINE])
    one = await gateway.admin("--json", "sessions", ONLINE)
    assert one.code == EXIT_OK, one.err
    assert one.json() == {"clientId": ONLINE, "online": True}
    many = await gateway.admin("sessions", ONLINE, OFFLINE)
    assert many.code == EXIT_OK, many.err
    assert [line.split() for line in many.out.splitlines()] == [
        ["CLIENT", "ID", "ONLINE"],
        [ONLINE, "yes"],
        [OFFLINE, "no"],
    ]
    shape = (await gateway.admin("--json", "sessions", ONLINE, OFFLINE)).json()
    assert shape == {
        "sessions": [{"clientId": ONLINE, "online": True}, {"clientId": OFFLINE, "online": False}]
    }


async def test_explain(gateway: Gateway) -> None:
    claims = json.dumps({"sub": "alice", "groups": ["ops"], "tenant": "t1"})
    result = await gateway.admin("--json", "explain", "--claims", claims, "--client-id", ONLINE)
    assert result.code == EXIT_OK, result.err
    answer = result.json()
    assert answer["subject"] == "alice"
    assert answer["clientId"] == ONLINE
    assert {"matched", "refused", "read", "write", "cachedTokens"} <= set(answer)
    table = await gateway.admin("explain", "--claims", claims)
    assert table.code == EXIT_OK, table.err
    assert "subject:  alice" in table.out
    assert "\nmatched:\nRULE" in table.out


async def test_revocations(gateway: Gateway) -> None:
    result = await gateway.admin("--json", "revocations")
    assert result.code == EXIT_OK, result.err
    assert set(result.json()) >= {"mode", "depth", "oldestPendingAgeSeconds", "recentFailures"}
    table = await gateway.admin("revocations")
    assert table.out.splitlines()[0].split() == ["mode:", "memory"]
    assert table.out.endswith("recent failures: none\n")


async def test_device_credentials(gateway: Gateway, emulator: EmulatorHandle) -> None:
    emulator.state.register_credential(emulator.instance_id, "GID_fleet@@@dev-9")
    result = await gateway.admin("--json", "device-credentials", "GID_fleet", "--page-size", "10")
    assert result.code == EXIT_OK, result.err
    assert result.json()["clientIds"] == ["GID_fleet@@@dev-9"]
    table = await gateway.admin("device-credentials", "GID_fleet")
    assert table.out.splitlines()[:2] == ["CLIENT ID", "GID_fleet@@@dev-9"]


# -- errors and exit codes -------------------------------------------------------------------


async def test_problem_is_one_line_and_exit_1(gateway: Gateway) -> None:
    # The gateway here has no IoT settings: 501 not_configured.
    result = await gateway.admin("iot-client-ids", "iot-dev-1")
    assert result.code == EXIT_REFUSED
    assert result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith("authserver admin: 501 not_configured: IoT Platform lookups need")
    bad = await gateway.admin("sessions", "not-a-client-id")
    assert bad.code == EXIT_REFUSED
    assert bad.err.startswith("authserver admin: 400 bad_request: clientId must be GroupId@@@")


async def test_wrong_credential_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("not-the-key")
    result = await gateway.admin("--api-key-file", str(wrong), "revocations")
    assert result.code == EXIT_REFUSED
    assert result.err.startswith("authserver admin: 401 invalid_token:")
    device = tmp_path / "device-jwt"
    device.write_text(make_jwt("alice"))
    scope = await gateway.admin(
        "--url", gateway.url, "--token-file", str(device), "revocations", env={}
    )
    assert scope.code == EXIT_REFUSED
    assert scope.err.startswith("authserver admin: 403 admin_scope_required:")


async def test_unreachable_is_exit_3(gateway: Gateway) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await gateway.admin(
        "--url", url, "revocations", env={"AUTHSERVER_ADMIN_API_KEY": API_KEY}
    )
    assert result.code == EXIT_UNREACHABLE
    assert result.err.startswith(f"authserver admin: cannot reach the gateway at {url}:")


@pytest.mark.parametrize(
    "argv",
    [
        ["revocations"],  # no credential anywhere
        ["--api-key-file", "/nonexistent/key", "revocations"],
        ["--url", "ftp://example.test", "--api-key-file", "KEY", "revocations"],
        ["--api-key-file", "KEY", "explain", "--claims", "[1, 2"],
        ["--api-key-file", "KEY", "explain", "--claims", "[1, 2]"],
        ["--api-key-file", "KEY", "revoke", "--mqtt-token-file", "KEY", "--no-block", "--yes"],
        ["--api-key-file", "KEY", "revoke", "--subject", "a", "--client-id", "GID_x@@@y"],
        ["--api-key-file", "KEY", "no-such-command"],
        ["--api-key-file", "KEY", "--token-file", "KEY", "revocations"],
    ],
)
async def test_usage_errors_are_exit_2(
    gateway: Gateway, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(gateway.key_file) if a == "KEY" else a for a in argv]
    result = await gateway.admin(*argv, env={})
    assert result.code == EXIT_USAGE
    assert "authserver admin" in result.err + capsys.readouterr().err
    assert result.out == ""


async def test_environment_supplies_url_and_credential(gateway: Gateway) -> None:
    env = {"AUTHSERVER_ADMIN_URL": gateway.url, "AUTHSERVER_ADMIN_TOKEN": admin_jwt()}
    result = await gateway.admin("--json", "revocations", env=env)
    assert result.code == EXIT_OK, result.err
    env = {"AUTHSERVER_ADMIN_URL": gateway.url, "AUTHSERVER_ADMIN_API_KEY": API_KEY}
    assert (await gateway.admin("revocations", env=env)).code == EXIT_OK


async def test_the_secret_is_never_printed(
    gateway: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command, its errors included, with the key and an admin JWT: neither shows."""
    jwt = admin_jwt()
    jwt_file = tmp_path / "admin-jwt"
    jwt_file.write_text(jwt)
    await gateway.device_tokens("alice")
    claims = json.dumps({"sub": "alice"})
    commands = [
        ["revocations"],
        ["tokens", "alice"],
        ["sessions", ONLINE, OFFLINE],
        ["explain", "--claims", claims],
        ["iot-client-ids", "iot-dev-1"],
        ["revoke", "--subject", "alice"],
        ["revoke", "--subject", "alice", "--yes"],
        ["sessions", "not-a-client-id"],
    ]
    for command in commands:
        for json_flag in ([], ["--json"]):
            await gateway.admin(*json_flag, *command)
            await gateway.admin(
                "--url", gateway.url, "--token-file", str(jwt_file), *json_flag, *command, env={}
            )
    await gateway.admin(
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "revocations",
        env={"AUTHSERVER_ADMIN_API_KEY": API_KEY},
    )
    stray = capsys.readouterr()  # anything written to the process's own streams
    printed = "".join([*gateway.printed, stray.out, stray.err])
    assert "revoked locally" in printed  # the commands did run
    assert API_KEY not in printed
    assert jwt not in printed


async def test_the_installed_command(gateway: Gateway) -> None:
    """`python -m authserver admin` as a script runs it: real process, real streams."""

    async def command(*argv: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "authserver",
            "admin",
            *argv,
            env={
                "PYTHONPATH": str(REPO),
                "AUTHSERVER_ADMIN_URL": gateway.url,
                "AUTHSERVER_ADMIN_API_KEY": API_KEY,
                "PATH": "/usr/bin:/bin",
            },
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await command("--json", "revocations")
    assert code == EXIT_OK, err
    assert json.loads(out)["depth"] == 0
    code, out, err = await command("revoke", "--subject", "alice")
    assert code == EXIT_NOT_CONFIRMED
    assert "needs --yes" in err
    code, out, err = await command()
    assert code == EXIT_USAGE
    assert "usage: authserver admin" in err


@pytest.fixture
async def hostile(aiohttp_server: Any) -> tuple[str, list[str]]:
    """Not our gateway: something at the URL that redirects or answers with escape codes."""
    from aiohttp import web

    seen: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/elsewhere/v1/admin/revocations")

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-API-Key", ""))
        return web.json_response({})

    async def escapes(request: web.Request) -> web.Response:
        problem = {"code": "bad\x1b[2J", "detail": "line one\nline two \x1b]0;title\x07"}
        return web.json_response(problem, status=400, content_type="application/problem+json")

    app = web.Application()
    app.router.add_get("/redirect/v1/admin/revocations", redirect)
    app.router.add_get("/elsewhere/v1/admin/revocations", elsewhere)
    app.router.add_get("/escapes/v1/admin/revocations", escapes)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), seen


async def test_redirects_are_not_followed(gateway: Gateway, hostile: tuple[str, list[str]]) -> None:
    """A redirect would carry the API key to wherever it points: refuse it instead."""
    url, seen = hostile
    result = await gateway.admin(
        "--url", url + "/redirect", "revocations", env={"AUTHSERVER_ADMIN_API_KEY": API_KEY}
    )
    assert result.code == EXIT_REFUSED
    assert result.err == (
        "authserver admin: HTTP 307: redirected to /elsewhere/v1/admin/revocations;"
        " give that --url\n"
    )
    assert seen == []


async def test_answers_cannot_drive_the_terminal(
    gateway: Gateway, hostile: tuple[str, list[str]]
) -> None:
    url, _seen = hostile
    result = await gateway.admin(
        "--url", url + "/escapes", "revocations", env={"AUTHSERVER_ADMIN_API_KEY": API_KEY}
    )
    assert result.code == EXIT_REFUSED
    assert result.err == "authserver admin: 400 bad?[2J: line one line two ?]0;title?\n"


async def test_timeout_must_be_positive(gateway: Gateway) -> None:
    assert (await gateway.admin("--timeout", "0", "revocations")).code == EXIT_USAGE


# Which admin routes (by name, see authserver/web/admin.py) each subcommand calls.
SUBCOMMAND_ROUTES = {
    "revoke": {"admin.revoke"},
    "revocations": {"admin.revocations"},
    "query": {"admin.query"},
    "tokens": {"admin.subject_tokens"},
    "sessions": {"admin.session", "admin.sessions_query"},
    "explain": {"admin.explain"},
    "device-credentials": {"admin.device_credentials"},
    "iot-client-ids": {"admin.iot_client_ids"},
    "device-credential": {
        "admin.device_credential",
        "admin.device_credential_refresh",
        "admin.device_credential_unregister",
    },
    "groups": {"admin.groups", "admin.group_create", "admin.group_delete"},
    "send-message": {"admin.send_message"},
    "client": {"admin.client_detail"},
    "group-online": {"admin.group_online", "admin.group_history"},
    "topic": {"admin.topic_online", "admin.topic_messages"},
}


def test_every_admin_route_has_a_subcommand(gateway: Gateway) -> None:
    """A new admin route without a subcommand fails here (add it to the CLI and the README)."""
    app = gateway.client.app
    named = {name for name in app.router.named_resources() if name.startswith("admin.")}
    assert set().union(*SUBCOMMAND_ROUTES.values()) == named
    subcommands = next(
        action.choices
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert set(subcommands) == set(SUBCOMMAND_ROUTES)
    readme = (REPO / "README.md").read_text().split("## Admin CLI", 1)[1].split("\n## ", 1)[0]
    for subcommand in SUBCOMMAND_ROUTES:
        assert f"| `{subcommand}" in readme, f"the README's Admin CLI table lacks {subcommand}"


async def test_a_malformed_credential_is_refused_unshown(gateway: Gateway, tmp_path: Path) -> None:
    """A header cannot carry a line break: refuse before sending, without echoing the value."""
    two_lines = tmp_path / "two-lines"
    two_lines.write_text(f"{API_KEY}\nsecond-line-secret\n")
    by_file = await gateway.admin(
        "--url", gateway.url, "--api-key-file", str(two_lines), "revocations", env={}
    )
    by_env = await gateway.admin(
        "--url",
        gateway.url,
        "revocations",
        env={"AUTHSERVER_ADMIN_TOKEN": "eyJ.secret-part\r\nX-Injected: 1"},
    )
    with_user = await gateway.admin(
        "--url", gateway.url.replace("http://", "http://user:hunter2@"), "revocations"
    )
    for result in (by_file, by_env, with_user):
        assert result.code == EXIT_USAGE
        assert result.out == ""
    assert "must be one line of visible ASCII characters (not shown here)" in by_file.err
    printed = "".join(gateway.printed)
    for secret in (API_KEY, "second-line-secret", "secret-part", "hunter2"):
        assert secret not in printed
