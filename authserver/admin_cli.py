"""`authserver admin ...`: the admin API of a running gateway from a shell or a script.

One subcommand per admin route. Answers print as tables (or, with `--json`, the server's JSON
body unchanged, one object per line); a refusal prints the problem+json as one line on stderr.
The credential comes from a file or an environment variable and is never printed.

Exit codes (stable; scripts may rely on them):
  0  done
  1  the gateway refused (4xx or 5xx, problem+json shown), redirected, or answered something
     unreadable
  2  usage: bad arguments, no credential, an unreadable file
  3  the gateway could not be reached (connection refused, DNS, TLS, timeout)
  4  a destructive command was not confirmed (declined, or no terminal and no --yes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, unquote

import aiohttp
from yarl import URL

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_CONFIRMED = 4

URL_ENV = "AUTHSERVER_ADMIN_URL"
API_KEY_ENV = "AUTHSERVER_ADMIN_API_KEY"
TOKEN_ENV = "AUTHSERVER_ADMIN_TOKEN"  # noqa: S105 (a variable's name, not a secret)
DEFAULT_URL = "http://127.0.0.1:8080"
PREFIX = "/v1/admin/"
PROG = "authserver admin"


class UsageError(Exception):
    """A mistake on the command line or in its inputs (exit 2)."""


class Refused(Exception):
    """The gateway answered with an error (exit 1); the message is one line."""


class NotConfirmed(Exception):
    """A destructive command without confirmation (exit 4)."""


@dataclass(frozen=True)
class Call:
    """One admin request: method, path under /v1/admin/, optional JSON body."""

    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass
class Streams:
    """Where the command reads confirmations and writes its output."""

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `authserver admin`, one subcommand per admin route."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Drive the admin API of a running gateway (see README, Admin CLI).",
        epilog="Exit codes: 0 done, 1 the gateway refused, 2 usage, 3 gateway unreachable, "
        "4 destructive command not confirmed.",
    )
    parser.add_argument(
        "--url", help=f"the gateway's base URL (default ${URL_ENV}, else {DEFAULT_URL})"
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--api-key-file", type=Path, help=f"file holding an admin API key (else ${API_KEY_ENV})"
    )
    who.add_argument(
        "--token-file", type=Path, help=f"file holding an admin JWT (else ${TOKEN_ENV})"
    )
    parser.add_argument("--json", action="store_true", help="print the server's JSON answer")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the gateway (30)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    revoke = commands.add_parser(
        "revoke",
        help="revoke one MQTT token, or every token of a subject, a clientId or a claim value",
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--subject", help="every token of this subject")
    which.add_argument("--client-id", help="every token of this MQTT clientId")
    which.add_argument(
        "--claim",
        metavar="NAME=VALUE",
        help="every token of the identities carrying this claim value, e.g. tenant=acme "
        "(a claim AUTHSERVER_REVOCABLE_CLAIMS names)",
    )
    which.add_argument(
        "--mqtt-token-file",
        help="one MQTT token, read from this file ('-' for stdin; never on the command line)",
    )
    revoke.add_argument(
        "--no-block",
        action="store_true",
        help="do not refuse the subject's/client's/claim value's app JWTs issued before now",
    )
    revoke.add_argument(
        "--grace-seconds",
        type=int,
        metavar="N",
        help="revoke the old tokens upstream only after N seconds (the caches drop them now)",
    )
    revoke.add_argument(
        "--device-credentials",
        choices=("unregister", "refresh"),
        help="also unregister or rotate the device credentials of the subject/clientId",
    )
    revoke.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    commands.add_parser("revocations", help="the upstream revocation queue")

    query = commands.add_parser("query", help="is an MQTT token valid?")
    query.add_argument(
        "--mqtt-token-file", required=True, help="file holding the MQTT token ('-' for stdin)"
    )

    tokens = commands.add_parser("tokens", help="a subject's live tokens (never their values)")
    tokens.add_argument("subject")

    sessions = commands.add_parser("sessions", help="whether MQTT clients are online (1 to 100)")
    sessions.add_argument("client_ids", nargs="+", metavar="CLIENT_ID")

    explain = commands.add_parser("explain", help="what the policy grants these claims")
    explain.add_argument("--claims", required=True, help='the JWT claims as JSON, {"sub": ...}')
    explain.add_argument("--client-id", help="the MQTT clientId the device would use")
    explain.add_argument("--subject", help="the subject (default: the claims' subject claim)")

    credentials = commands.add_parser(
        "device-credentials", help="one page of a group's devices holding a device credential"
    )
    credentials.add_argument("group_id", metavar="GROUP_ID")
    credentials.add_argument("--page-size", type=int)
    credentials.add_argument("--page-no", type=int)
    credentials.add_argument("--next-token")

    iot = commands.add_parser("iot-client-ids", help="the ClientIDs of an IoT Platform device")
    iot.add_argument("iot_id", metavar="IOT_ID")

    credential = commands.add_parser(
        "device-credential", help="one clientId's device credential (never its secret)"
    )
    credential.add_argument("client_id", metavar="CLIENT_ID")
    change = credential.add_mutually_exclusive_group()
    change.add_argument("--refresh", action="store_true", help="rotate its secret")
    change.add_argument("--unregister", action="store_true", help="drop it")
    credential.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    groups = commands.add_parser("groups", help="list, create or delete Group IDs")
    group_change = groups.add_mutually_exclusive_group()
    group_change.add_argument("--create", metavar="GROUP_ID", help="create this Group ID")
    group_change.add_argument("--delete", metavar="GROUP_ID", help="delete this Group ID")
    groups.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    message = commands.add_parser("send-message", help="publish one message to a topic")
    message.add_argument("topic", metavar="TOPIC")
    message.add_argument("payload", metavar="PAYLOAD")
    message.add_argument("--base64", action="store_true", help="PAYLOAD is base64 (checked)")

    client = commands.add_parser(
        "client", help="one client's detail: online, address, subscriptions (legacy API)"
    )
    client.add_argument("client_id", metavar="CLIENT_ID")

    online = commands.add_parser(
        "group-online", help="a group's online count, or its history (legacy API)"
    )
    online.add_argument("group_id", metavar="GROUP_ID")
    online.add_argument("--history", action="store_true", help="per minute over a range")
    topic = commands.add_parser(
        "topic", help="online subscribers of a topic, or its message volume (legacy API)"
    )
    topic.add_argument("topic", metavar="TOPIC")
    topic.add_argument("--messages", action="store_true", help="message volume per minute")
    topic.add_argument("--measure", choices=("SUM", "TPS"))
    topic.add_argument("--direction", choices=("PUB", "SUB"))
    for sub in (online, topic):
        sub.add_argument("--begin", type=int, help="epoch ms (default an hour before --end)")
        sub.add_argument("--end", type=int, help="epoch ms (default now)")
    return parser


def _query(path: str, params: Mapping[str, Any]) -> str:
    given = {k: v for k, v in params.items() if v is not None}
    if not given:
        return path
    return path + "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in given.items())


def _segment(value: str) -> str:
    """One path segment, percent-encoded ('/' included)."""
    return quote(value, safe="")


def _read_secret(path: str | Path, what: str, stdin: TextIO) -> str:
    try:
        text = stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read {what} from {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise UsageError(f"cannot read {what} from {path}: not UTF-8 text") from err
    value = text.strip()
    if not value:
        raise UsageError(f"{what} file {path} is empty")
    return _one_word(value, f"{what} in {path}")


def _one_word(value: str, what: str) -> str:
    """A credential or token: visible ASCII, no spaces or line breaks (never shown back)."""
    if not value.isascii() or not all(c.isprintable() and not c.isspace() for c in value):
        raise UsageError(f"{what} must be one line of visible ASCII characters (not shown here)")
    return value


def _credential(args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO) -> dict[str, str]:
    """The admin credential as request headers; files win over the environment."""
    if args.api_key_file is not None:
        return {"X-API-Key": _read_secret(args.api_key_file, "the API key", stdin)}
    if args.token_file is not None:
        jwt = _read_secret(args.token_file, "the admin JWT", stdin)
        return {"Authorization": f"Bearer {jwt}"}
    if env.get(API_KEY_ENV, "").strip():
        return {"X-API-Key": _one_word(env[API_KEY_ENV].strip(), API_KEY_ENV)}
    if env.get(TOKEN_ENV, "").strip():
        return {"Authorization": f"Bearer {_one_word(env[TOKEN_ENV].strip(), TOKEN_ENV)}"}
    raise UsageError(
        f"no admin credential: give --api-key-file or --token-file, or set {API_KEY_ENV} "
        f"or {TOKEN_ENV}"
    )


def _call(args: argparse.Namespace, stdin: TextIO) -> Call:
    """The request a parsed command line stands for."""
    command = args.command
    if command == "revoke":
        body: dict[str, Any]
        if args.mqtt_token_file is not None:
            if args.no_block:
                raise UsageError("--no-block applies to --subject or --client-id, not one token")
            body = {"token": _read_secret(args.mqtt_token_file, "the MQTT token", stdin)}
        elif args.subject is not None:
            body = {"subject": args.subject}
        elif args.claim is not None:
            name, sep, value = args.claim.partition("=")
            if not sep or not name or not value:
                raise UsageError("--claim takes NAME=VALUE, e.g. --claim tenant=acme")
            body = {"claim": {"name": name, "value": value}}
        else:
            body = {"clientId": args.client_id}
        if args.no_block:
            body["blockIssuedBefore"] = False
        if args.grace_seconds is not None:
            body["graceSeconds"] = args.grace_seconds
        if args.device_credentials is not None:
            if "token" in body or "claim" in body:
                raise UsageError("--device-credentials applies to --subject or --client-id")
            body["deviceCredentials"] = args.device_credentials
        return Call("POST", "revoke", body)
    if command == "revocations":
        return Call("GET", "revocations")
    if command == "query":
        return Call(
            "POST", "query", {"token": _read_secret(args.mqtt_token_file, "the MQTT token", stdin)}
        )
    if command == "tokens":
        return Call("GET", f"subjects/{_segment(args.subject)}/tokens")
    if command == "sessions":
        if len(args.client_ids) == 1:
            return Call("GET", f"sessions/{_segment(args.client_ids[0])}")
        return Call("POST", "sessions:query", {"clientIds": args.client_ids})
    if command == "explain":
        try:
            claims = json.loads(args.claims)
        except ValueError as err:
            raise UsageError(f"--claims is not JSON: {err}") from err
        if not isinstance(claims, dict):
            raise UsageError("--claims must be a JSON object")
        body = {"claims": claims}
        if args.client_id is not None:
            body["clientId"] = args.client_id
        if args.subject is not None:
            body["subject"] = args.subject
        return Call("POST", "explain", body)
    if command == "device-credentials":
        params = {
            name: value
            for name, value in (
                ("pageSize", args.page_size),
                ("pageNo", args.page_no),
                ("nextToken", args.next_token),
            )
            if value is not None
        }
        path = f"groups/{_segment(args.group_id)}/device-credentials"
        if params:
            path += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
        return Call("GET", path)
    if command == "iot-client-ids":
        return Call("GET", f"iot/devices/{_segment(args.iot_id)}/client-ids")
    return _manage_call(args)


def _manage_call(args: argparse.Namespace) -> Call:
    """The management and legacy-report subcommands."""
    command = args.command
    if command == "device-credential":
        path = f"device-credentials/{_segment(args.client_id)}"
        if args.refresh:
            return Call("POST", path + "/refresh", {})
        return Call("DELETE" if args.unregister else "GET", path)
    if command == "groups":
        if args.create is not None:
            return Call("POST", "groups", {"groupId": args.create})
        if args.delete is not None:
            return Call("DELETE", f"groups/{_segment(args.delete)}")
        return Call("GET", "groups")
    if command == "send-message":
        body = {"topic": args.topic, "payload": args.payload}
        if args.base64:
            body["encoding"] = "base64"
        return Call("POST", "messages", body)
    if command == "client":
        return Call("GET", f"clients/{_segment(args.client_id)}")
    if command == "group-online":
        path = f"groups/{_segment(args.group_id)}/online"
        if not args.history:
            if args.begin is not None or args.end is not None:
                raise UsageError("--begin and --end go with --history")
            return Call("GET", path)
        return Call("GET", _query(path + "-history", {"begin": args.begin, "end": args.end}))
    assert command == "topic"
    if not args.messages:
        if any(v is not None for v in (args.begin, args.end, args.measure, args.direction)):
            raise UsageError("--begin, --end, --measure and --direction go with --messages")
        return Call("GET", _query("topics/online", {"topic": args.topic}))
    params = {
        "topic": args.topic,
        "begin": args.begin,
        "end": args.end,
        "measure": args.measure,
        "direction": args.direction,
    }
    return Call("GET", _query("topics/messages", params))


def _what_change_does(call: Call, url: str) -> str | None:
    """The confirmation question of a destructive management call, or None."""
    if call.method == "DELETE" and call.path.startswith("device-credentials/"):
        what = "Unregister the device credential of " + call.path.split("/", 1)[1]
    elif call.method == "POST" and call.path.endswith("/refresh"):
        what = "Rotate the device secret of " + call.path.split("/")[1]
    elif call.method == "DELETE" and call.path.startswith("groups/"):
        what = "Delete Group ID " + call.path.split("/", 1)[1]
    else:
        return None
    return _printable(f"{unquote(what)} at {url}?")


def _printable(text: str) -> str:
    """`text` with control characters as '?': what a gateway sends cannot drive the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _what_revoke_does(body: Mapping[str, Any], url: str) -> str:
    if "token" in body:
        target = "one MQTT token"
    elif "subject" in body:
        target = f"every token of subject {body['subject']!r}"
    elif "claim" in body:
        claim = body["claim"]
        target = f"every token of the identities whose {claim['name']!r} is {claim['value']!r}"
    else:
        target = f"every token of clientId {body['clientId']!r}"
    block = (
        ""
        if "token" in body or body.get("blockIssuedBefore") is False
        else (" and refuse its app JWTs issued before now")
    )
    grace = body.get("graceSeconds")
    later = f" (upstream after {grace} s)" if grace else ""
    return _printable(f"Revoke {target}{block}{later} at {url}?")


def _confirmed(question: str, streams: Streams, command: str = "revoke") -> bool:
    if not streams.stdin.isatty():
        nothing = "nothing was revoked" if command == "revoke" else "nothing was changed"
        raise NotConfirmed(f"{command} needs --yes when stdin is not a terminal; {nothing}")
    streams.stderr.write(f"{question} [y/N] ")
    streams.stderr.flush()
    return streams.stdin.readline().strip().lower() in {"y", "yes"}


def _problem_line(status: int, text: str) -> str:
    """The gateway's error answer as one line: status, code, detail."""
    try:
        problem = json.loads(text)
    except ValueError:
        problem = None
    if isinstance(problem, dict) and ("code" in problem or "title" in problem):
        code = problem.get("code") or problem.get("title")
        detail = problem.get("detail") or problem.get("title") or ""
        line = f"{status} {code}: {detail}"
        if "upstream_code" in problem:
            line += f" (upstream {problem['upstream_code']})"
    else:
        line = f"HTTP {status}: {' '.join(text.split())[:200] or '(empty answer)'}"
    return _printable(" ".join(line.split()))


async def _send(
    url: str, call: Call, headers: Mapping[str, str], seconds: float
) -> tuple[int, str]:
    target = URL(url.rstrip("/") + PREFIX + call.path, encoded=True)
    session_timeout = aiohttp.ClientTimeout(total=seconds)
    async with (
        aiohttp.ClientSession(timeout=session_timeout, cookie_jar=aiohttp.DummyCookieJar()) as http,
        # Never follow a redirect: it would carry the credential to wherever it points.
        http.request(
            call.method, target, json=call.body, headers=dict(headers), allow_redirects=False
        ) as resp,
    ):
        if 300 <= resp.status < 400:
            where = resp.headers.get("Location", "?")
            raise Refused(f"HTTP {resp.status}: redirected to {_printable(where)}; give that --url")
        return resp.status, await resp.text()


def _when(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return _printable(str(value))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(header), *([_cell(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _pairs(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {_cell(v)}" for k, v in pairs)


def _show_revoke(a: dict[str, Any]) -> str:
    return _pairs(
        [
            ("revoked locally", a.get("revokedLocally")),
            ("queued for RevokeToken", a.get("queued")),
            ("JWTs blocked if issued before", _when(a.get("blockedIssuedBefore"))),
            *(
                [("revoked upstream after", _when(a["upstreamRevocationAfter"]))]
                if "upstreamRevocationAfter" in a
                else []
            ),
            ("fingerprints", a.get("fingerprints")),
        ]
    )


def _show_revocations(a: dict[str, Any]) -> str:
    out = _pairs(
        [
            ("mode", a.get("mode")),
            ("depth", a.get("depth")),
            ("delayed (grace)", a.get("delayed")),
            ("oldest pending (s)", a.get("oldestPendingAgeSeconds")),
        ]
    )
    failures = a.get("recentFailures") or []
    if not failures:
        return out + "\nrecent failures: none"
    rows = [
        (_when(f.get("at")), f.get("fingerprint"), f.get("final"), f.get("reason"))
        for f in failures
    ]
    return out + "\nrecent failures:\n" + _table(rows, ("AT", "FINGERPRINT", "FINAL", "REASON"))


def _show_query(a: dict[str, Any]) -> str:
    pairs = [("valid", a.get("valid")), ("source", a.get("source"))]
    pairs += [(k, a[k]) for k in ("reason", "cached") if k in a]
    pairs += [("fingerprint", a.get("fingerprint"))]
    if "type" in a:
        pairs += [("type", a["type"]), ("resources", a.get("resources"))]
        pairs += [("expires", _when(a.get("expireTime")))]
    return _pairs(pairs)


def _show_tokens(a: dict[str, Any]) -> str:
    tokens = a.get("tokens") or []
    if not tokens:
        return f"subject {a.get('subject')!r} holds no live token"
    rows = [
        (
            t.get("type"),
            t.get("fingerprint"),
            "(shared)" if t.get("shared") else t.get("clientId"),
            _when(t.get("issuedAt")),
            _when(t.get("expireTime")),
            t.get("resources"),
        )
        for t in tokens
    ]
    return _table(rows, ("TYPE", "FINGERPRINT", "CLIENT ID", "ISSUED", "EXPIRES", "RESOURCES"))


def _show_sessions(a: dict[str, Any]) -> str:
    sessions = a.get("sessions", [a])
    return _table([(s.get("clientId"), s.get("online")) for s in sessions], ("CLIENT ID", "ONLINE"))


def _show_explain(a: dict[str, Any]) -> str:
    policy = a.get("policy") or {}
    groups = a.get("groups") or {}
    out = _pairs(
        [
            ("policy", f"{policy.get('version')} ({policy.get('source')})"),
            ("subject", a.get("subject")),
            ("clientId", a.get("clientId")),
            ("groups", groups.get("matched")),
            ("read", a.get("read")),
            ("write", a.get("write")),
            ("ttl (s)", a.get("ttlSeconds")),
        ]
    )
    matched = [(m.get("rule"), m.get("actions"), m.get("topics")) for m in a.get("matched", [])]
    if matched:
        out += "\nmatched:\n" + _table(matched, ("RULE", "ACTIONS", "TOPICS"))
    refused = [(r.get("rule"), r.get("template"), r.get("reason")) for r in a.get("refused", [])]
    if refused:
        out += "\nrefused:\n" + _table(refused, ("RULE", "TEMPLATE", "REASON"))
    cached = [
        (t.get("type"), t.get("cached"), t.get("fingerprint"), t.get("resources"))
        for t in a.get("cachedTokens", [])
    ]
    if cached:
        out += "\ntokens:\n" + _table(cached, ("TYPE", "CACHED", "FINGERPRINT", "RESOURCES"))
    return out


def _show_credentials(a: dict[str, Any]) -> str:
    rows = [(c,) for c in a.get("clientIds") or []]
    out = _table(rows, ("CLIENT ID",)) if rows else "no device holds a credential in this page"
    footer = f"total {a.get('total')}, page {a.get('pageNo')} of size {a.get('pageSize')}"
    if a.get("nextToken"):
        footer += f", next page: --next-token {_printable(str(a['nextToken']))}"
    return out + "\n" + footer


def _show_iot(a: dict[str, Any]) -> str:
    rows = [(c.get("clientId"), _when(c.get("createTime"))) for c in a.get("clientIds") or []]
    return _table(rows, ("CLIENT ID", "CREATED")) if rows else "no ClientID for this device"


def _show_credential(a: dict[str, Any]) -> str:
    if "unregistered" in a:
        return f"unregistered the device credential of {_printable(str(a.get('clientId')))}"
    return _pairs(
        [
            ("client id", a.get("clientId")),
            ("access key id", a.get("deviceAccessKeyId")),
            ("secret fingerprint", a.get("secretFingerprint")),
            ("created", _when(a.get("createTime"))),
            ("updated", _when(a.get("updateTime"))),
        ]
    )


def _show_groups(a: dict[str, Any]) -> str:
    if "groups" not in a:
        done = "created" if a.get("created") else "deleted"
        return f"{done} {_printable(str(a.get('groupId')))}"
    rows = [(g.get("groupId"), _when(g.get("createTime"))) for g in a["groups"] or []]
    return _table(rows, ("GROUP ID", "CREATED")) if rows else "no Group ID"


def _show_message(a: dict[str, Any]) -> str:
    return _pairs([("topic", a.get("topic")), ("message id", a.get("msgId"))])


def _show_client(a: dict[str, Any]) -> str:
    out = _pairs(
        [
            ("client id", a.get("clientId")),
            ("online", a.get("online")),
            ("address", a.get("address")),
            ("last touch", _when(a.get("lastTouch"))),
        ]
    )
    rows = [(s.get("topic"), s.get("qos")) for s in a.get("subscriptions") or []]
    return out + ("\n" + _table(rows, ("SUBSCRIPTION", "QOS")) if rows else "")


def _show_series_or_count(a: dict[str, Any]) -> str:
    if "points" not in a:
        return f"online: {a.get('onlineCount')}"
    rows = [(_when(p.get("time")), p.get("value")) for p in a["points"] or []]
    header = f"{a.get('title')} ({a.get('yUnit')})"
    return _printable(header) + "\n" + _table(rows, ("TIME", "VALUE"))


SHOW: dict[str, Callable[[dict[str, Any]], str]] = {
    "device-credential": _show_credential,
    "groups": _show_groups,
    "send-message": _show_message,
    "client": _show_client,
    "group-online": _show_series_or_count,
    "topic": _show_series_or_count,
    "revoke": _show_revoke,
    "revocations": _show_revocations,
    "query": _show_query,
    "tokens": _show_tokens,
    "sessions": _show_sessions,
    "explain": _show_explain,
    "device-credentials": _show_credentials,
    "iot-client-ids": _show_iot,
}


async def run(argv: Sequence[str], env: Mapping[str, str], streams: Streams) -> int:
    """Parse, confirm, call the gateway and print; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as stop:  # argparse printed the usage error (or --help)
        return int(stop.code or 0)
    url = args.url or env.get(URL_ENV) or DEFAULT_URL
    try:
        parsed = URL(url)
        if parsed.scheme not in {"http", "https"} or not parsed.host:
            raise UsageError("--url must be an http:// or https:// URL with a host")
        if parsed.user is not None or parsed.password is not None:
            raise UsageError("--url must not carry a user or password; use a credential file")
        if not args.timeout > 0:
            raise UsageError("--timeout must be a positive number of seconds")
        headers = _credential(args, env, streams.stdin)
        call = _call(args, streams.stdin)
        if args.command == "revoke" and not args.yes:
            assert call.body is not None
            if not _confirmed(_what_revoke_does(call.body, url), streams):
                raise NotConfirmed("not confirmed; nothing was revoked")
        question = _what_change_does(call, url)
        if (
            question is not None
            and not args.yes
            and not _confirmed(question, streams, args.command)
        ):
            raise NotConfirmed("not confirmed; nothing was changed")
        status, text = await _send(url, call, headers, args.timeout)
        if status >= 400:
            raise Refused(_problem_line(status, text))
        try:
            answer = json.loads(text)
        except ValueError as err:
            raise Refused(f"HTTP {status}: the answer is not JSON") from err
        if not isinstance(answer, dict):
            raise Refused(f"HTTP {status}: the answer is not a JSON object")
    except UsageError as err:
        streams.stderr.write(f"{PROG}: {err}\n")
        return EXIT_USAGE
    except NotConfirmed as err:
        streams.stderr.write(f"{PROG}: {err}\n")
        return EXIT_NOT_CONFIRMED
    except Refused as err:
        streams.stderr.write(f"{PROG}: {err}\n")
        return EXIT_REFUSED
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        reason = str(err) or type(err).__name__
        streams.stderr.write(f"{PROG}: cannot reach the gateway at {url}: {reason}\n")
        return EXIT_UNREACHABLE
    if args.json:
        streams.stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
    else:
        streams.stdout.write(SHOW[args.command](answer) + "\n")
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    """The `authserver admin` subcommand: exit code of `run` on the real streams."""
    return asyncio.run(run(argv, os.environ, Streams(sys.stdin, sys.stdout, sys.stderr)))
