"""``authserver policy check|explain``: validate a policy file, or show what it grants someone.

Exit codes: 0 success, 1 the policy file is invalid, 2 usage error (bad arguments or claims).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn, TextIO

from authserver.policy.engine import DEFAULT_RESOURCE_LIMIT, explain
from authserver.policy.loader import load_policy
from authserver.policy.model import Policy, PolicyLoadError

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports usage errors instead of exiting the process."""

    def error(self, message: str) -> NoReturn:
        """Turn argparse's exit into an exception main() maps to exit code 2."""
        raise _UsageError(f"{self.format_usage()}{self.prog}: error: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="authserver policy", description="Validate and explain policy files.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    check = commands.add_parser("check", help="validate a policy file and summarize it")
    check.add_argument("file", help="the policy YAML file")
    exp = commands.add_parser("explain", help="show which rules match and the Resources sent")
    exp.add_argument("file", help="the policy YAML file")
    exp.add_argument(
        "--claims", required=True, help="the JWT claims as a JSON object, or @FILE to read them"
    )
    exp.add_argument(
        "--client-id",
        default=None,
        help="a clientId to check against the policy's clientIds (and use for {client_id})",
    )
    exp.add_argument("--subject", default=None, help="the subject (default: the 'sub' claim)")
    exp.add_argument(
        "--limit", type=int, default=DEFAULT_RESOURCE_LIMIT, help="resources allowed per token"
    )
    exp.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _load(path: str, err: TextIO) -> Policy | None:
    try:
        return load_policy(path)
    except PolicyLoadError as exc:
        print(f"INVALID {path}: {len(exc.problems)} problem(s)", file=err)
        for problem in exc.problems:
            print(f"  {problem}", file=err)
        return None


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    policy = _load(args.file, err)
    if policy is None:
        return EXIT_INVALID
    rules = len(policy.rules)
    client_ids = sum(len(ids.templates) for ids in policy.client_id_lists)
    print(
        f"OK {policy.source} (version {policy.version_id}): {rules} rule(s); "
        f"everyone {len(policy.everyone)}, {len(policy.groups)} group(s), "
        f"{len(policy.users)} user(s); {client_ids} clientIds template(s); "
        f"groups claim {policy.groups_claim!r}; "
        f"ttl {policy.ttl_seconds}s, max {policy.max_ttl_seconds}s",
        file=out,
    )
    return EXIT_OK


def _claims(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise _UsageError(f"--claims: cannot read {text[1:]}: {exc.strerror}") from None
    try:
        claims = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _UsageError(f"--claims: not valid JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise _UsageError("--claims: must be a JSON object")
    return claims


def _text(report: dict[str, Any]) -> str:
    lines = [
        f"policy   {report['policy']['source']} (version {report['policy']['version']})",
        f"subject  {report['subject']!r}"
        + (f"  client id {report['clientId']!r}" if report["clientId"] is not None else ""),
        f"groups   claim {report['groups']['claim']!r}: {report['groups']['values'] or 'none'}"
        f"; in policy: {report['groups']['matched'] or 'none'}",
        "clientIds this identity may use: "
        + (", ".join(report["clientIds"]) or "none (naming any gets 403)"),
    ]
    if report["clientIdAllowed"] is not None:
        verdict = "allowed"
        if not report["clientIdAllowed"]:
            verdict = "NOT ALLOWED (a request naming it gets 403 client_id_not_allowed)"
        lines.append(f"client id {report['clientId']!r}: {verdict}")
    lines.append("matched rules:")
    for m in report["matched"]:
        topics = ", ".join(m["topics"]) or "(no topic granted)"
        lines.append(f"  {m['rule']:<24} {','.join(m['actions']):<4} {topics}")
    if report["refused"]:
        lines.append("refused:")
        lines.extend(f"  {r['rule']:<24} {r['template']}: {r['reason']}" for r in report["refused"])
    lines.append("tokens (ApplyToken calls):")
    if not report["tokens"]:
        lines.append("  none: the policy grants nothing (default deny)")
    for t in report["tokens"]:
        lines.append(f"  Actions={t['actions']} Resources={t['resources']}")
    lines.append(f"ttl      {report['ttlSeconds']}s (max {report['maxTtlSeconds']}s)")
    if report["tooBroad"]:
        lines.append(f"TOO BROAD: {report['tooBroad']}")
    return "\n".join(lines)


def _explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    claims = _claims(args.claims)
    subject = args.subject if args.subject is not None else claims.get("sub")
    if not isinstance(subject, str):
        raise _UsageError("no subject: give --subject or a string 'sub' in --claims")
    policy = _load(args.file, err)
    if policy is None:
        return EXIT_INVALID
    report = explain(policy, subject, claims, args.client_id, limit=args.limit)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False), file=out)
    else:
        print(_text(report), file=out)
    return EXIT_OK


def main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``policy check FILE`` or ``policy explain FILE --claims JSON``; return the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser().parse_args(argv)
        if args.command == "check":
            return _check(args, out, err)
        return _explain(args, out, err)
    except _UsageError as exc:
        print(str(exc), file=err)
        return EXIT_USAGE
    except SystemExit as exc:  # --help prints and exits 0
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
