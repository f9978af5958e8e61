"""The `authserver` command line: serve, demo, emulator, device, policy, admin."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from authserver import __version__

USAGE = """\
authserver {serve,demo,emulator,device,policy,admin} ...

  serve      run the gateway (configured by AUTHSERVER_* variables; see README)
  demo       emulator + gateway in one process, in-memory store, example policy (local only)
  emulator   a local stand-in for the vendor MQTT token OpenAPI (and its MQTT broker)
  device     a reference MQTT device (app JWT in DEVICE_JWT) that lives on the gateway's tokens
  policy     check FILE | explain FILE --claims JSON [--client-id ID]
  admin      the admin API of a running gateway: revoke, query, tokens, sessions, explain, ...
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="authserver",
        usage=USAGE,
        description="Token gateway between MQTT devices and the cloud MQTT token API.",
    )
    parser.add_argument("--version", action="version", version=f"authserver {__version__}")
    parser.add_argument(
        "command", choices=["serve", "demo", "emulator", "device", "policy", "admin"]
    )
    if not args or args[0] in {"-h", "--help", "--version"}:
        parser.parse_args(args or ["--help"])
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
    parser.parse_args(args)  # prints the usage error and exits 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
