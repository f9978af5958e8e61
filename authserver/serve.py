"""`authserver serve`: load settings, configure logging, run the gateway."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from authserver.settings import SettingsError, load_settings


def configure_logging(level: str) -> None:
    """Plain structured-enough logs on stderr; never a token (modules log fingerprints)."""
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def serve_main(argv: Sequence[str]) -> int:
    """Run the gateway until interrupted; exit 2 on bad configuration."""
    parser = argparse.ArgumentParser(
        prog="authserver serve",
        description="Run the gateway. Configuration comes from AUTHSERVER_* variables "
        "and ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET / _SECURITY_TOKEN (see README).",
    )
    parser.parse_args(list(argv))
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"authserver: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from authserver.app import create_app
    from authserver.policy.model import PolicyLoadError

    try:
        app = create_app(settings)
    except PolicyLoadError as err:
        print("authserver: invalid policy:\n  - " + "\n  - ".join(err.problems), file=sys.stderr)
        return 2
    web.run_app(app, host=settings.host, port=settings.port, access_log=None, print=None)
    return 0
