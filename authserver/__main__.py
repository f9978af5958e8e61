"""The `authserver` command line: serve, demo, emulator, device, policy, admin, jwt."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from authserver import __version__

COMMANDS = """\
commands:
  serve      run the gateway (configured by AUTHSERVER_* variables; see README)
  demo       emulator, MQTT broker and gateway in one process, example policy (local only)
  emulator   a local stand-in for the vendor MQTT token OpenAPI (and, with --mqtt-port, its broker)
  device     a reference MQTT device (app JWT in DEVICE_JWT) that lives on the gateway's tokens
  policy     check FILE | explain FILE --claims JSON [--client-id ID]
  admin      the admin API of a running gateway: revoke, query, tokens, sessions, explain, ...
  jwt        mint a test HS256 JWT (a device's or an admin's) for the demo or a local gateway

'authserver COMMAND --help' describes each one.
"""
NAMES = ("serve", "demo", "emulator", "device", "policy", "admin", "jwt")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="authserver",
        usage="authserver [--version] COMMAND ...",
        description="Token gateway between MQTT devices and the cloud MQTT token API.",
        epilog=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"authserver {__version__}")
    # The commands are listed once, in the epilog; argparse would list the choices again.
    parser.add_argument("command", choices=NAMES, help=argparse.SUPPRESS)
    if not args:
        # No command is a usage error: scripts that forgot one must not see success.
        parser.print_help(sys.stderr)
        return 2
    if args[0] in {"-h", "--help", "--version"}:
        parser.parse_args(args)
        return 0
    command, rest = args[0], args[1:]
    if command == "serve":
        from authserver.serve import serve_main

        return serve_main(rest)
    if command == "demo":
        from authserver.demo import demo_main

        return demo_main(rest)
    if command == "emulator":
        from authserver.emulator.cli import main as emulator_main

        return emulator_main(rest)
    if command == "device":
        from authserver.device import device_main

        return device_main(rest)
    if command == "policy":
        from authserver.policy.cli import main as policy_main

        return policy_main(rest)
    if command == "admin":
        from authserver.admin_cli import main as admin_main

        return admin_main(rest)
    if command == "jwt":
        from authserver.jwt_cli import main as jwt_main

        return jwt_main(rest)
    parser.parse_args(args)  # prints the usage error and exits 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
