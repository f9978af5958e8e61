"""`authserver serve`: run the gateway, one process or a supervisor of N workers on one port.

Shutdown on SIGTERM (or SIGINT), in this order, within Kubernetes' 30 s grace period:

1. readiness turns false at once (`/readyz` answers 503, check `shutdown: draining`) and every
   answer carries `Connection: close`, so clients stop reusing connections to this pod;
2. the gateway keeps serving for `AUTHSERVER_SHUTDOWN_DELAY` seconds (default 5), the time the
   ingress and the Service endpoints take to stop routing here;
3. the listening socket closes, requests in flight finish (at most `DRAIN_TIMEOUT` seconds),
   idle connections close;
4. the application's cleanup contexts stop the background workers and close Redis and HTTP.

A second SIGTERM during the delay skips the rest of it. SIGHUP reloads the policy file now.

The HTTP layer's limits come from settings (`server_options`): a connection without a complete
request head for `AUTHSERVER_KEEPALIVE_TIMEOUT` seconds is closed, whether it is idle between
requests or sending its headers a byte at a time (aiohttp keeps one timer for both); request
and header lines are bounded by `AUTHSERVER_MAX_HEADER_BYTES`; a body has
`AUTHSERVER_BODY_READ_TIMEOUT` seconds (`web.request.read_body`, 408).

With `--workers N`, a small supervisor starts N worker processes (`authserver serve` each,
binding the port with SO_REUSEPORT so the kernel spreads connections), forwards SIGTERM,
SIGINT and SIGHUP to them, and exits when they have all exited; if one dies on its own, it
stops the others and exits 1, so the container restarts as a whole.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from aiohttp import web

from authserver import logs
from authserver.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)

# In-flight requests get this long to finish once the listener is closed. With the default
# 5 s delay before it, a pod is gone well within the default 30 s terminationGracePeriod.
DRAIN_TIMEOUT = 15.0
# How long aiohttp keeps reading (and discarding) a body it did not need, so the client gets
# the answer rather than a reset; then the connection closes. Its default is 10 s.
LINGERING_TIME = 2.0
GC_GEN0_THRESHOLD = 20_000
WORKER_FLAG = "--reuse-port"
SUPERVISOR_GRACE = 28.0


def configure_logging(level: str, *, json: bool = False) -> None:
    """Log to stderr: plain text by default (the demo), JSON lines for the server."""
    logs.configure_logging(level, json=json)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `AUTHSERVER_EVENT_LOOP` asks for; None: asyncio's own.

    "auto" takes uvloop on Linux (a dependency but on Windows; asyncio's loop if it is
    missing all the same): it serves the cached path faster (README, Performance).
    """
    if choice == "asyncio" or (choice == "auto" and not sys.platform.startswith("linux")):
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":  # settings refuse it first; kept for callers without them
            raise
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def serve_main(argv: Sequence[str]) -> int:
    """Run the gateway until SIGTERM; exit 2 on bad configuration."""
    parser = argparse.ArgumentParser(
        prog="authserver serve",
        description="Run the gateway. Configuration comes from AUTHSERVER_* variables "
        "and ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET / _SECURITY_TOKEN (see README).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port with SO_REUSEPORT (default 1); "
        "with more than one, configure AUTHSERVER_REDIS_URL so they share cache and quota",
    )
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"authserver: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json=settings.log_format == "json")
    if args.workers > 1:
        return supervise(settings, args.workers)
    return run_worker(settings, reuse_port=bool(args.reuse_port))


def tune_gc() -> None:
    """Keep the collector's full passes rare and short on a long-lived cache-heavy server.

    Everything alive after start-up (modules, settings, the policy) is frozen out of the
    collector's sight; the young generation is collected after more allocations, so a
    request-heavy loop does not keep promoting short-lived objects into passes that then
    walk every cached token and identity (seen as 80-100 ms p99 stalls under W2 load).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def run_worker(settings: Settings, *, reuse_port: bool = False) -> int:
    """Build the app and serve it in this process until SIGTERM; the exit code."""
    from authserver.app import create_app
    from authserver.policy.model import PolicyLoadError
    from authserver.web.admin_auth import ApiKeysFileError

    try:
        app = create_app(settings)
    except PolicyLoadError as err:
        print("authserver: invalid policy:\n  - " + "\n  - ".join(err.problems), file=sys.stderr)
        return 2
    except ApiKeysFileError as err:
        print(f"authserver: {err}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        return runner.run(serve_app(app, settings, reuse_port=reuse_port))


def server_options(app: web.Application, settings: Settings) -> dict[str, Any]:
    """How aiohttp serves `app` (AppRunner keywords): timeouts, parser limits, its log."""
    from authserver import appkeys
    from authserver.web.observe import ProtocolLog

    return {
        "access_log": None,
        "keepalive_timeout": settings.keepalive_timeout,
        "lingering_time": LINGERING_TIME,
        "max_line_size": settings.max_header_bytes,
        "max_field_size": settings.max_header_bytes,
        "logger": ProtocolLog(app[appkeys.METRICS].requests),
    }


async def serve_app(app: web.Application, settings: Settings, *, reuse_port: bool = False) -> int:
    """Serve `app` until SIGTERM/SIGINT, then drain and shut down in order; the exit code."""
    from authserver.web.observe import reload_policy, start_draining

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_policy, app)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=DRAIN_TIMEOUT, **server_options(app, settings)
    )
    try:
        await runner.setup()
        tune_gc()
        site = web.TCPSite(
            runner, settings.host, settings.port, reuse_port=reuse_port or None, backlog=1024
        )
        await site.start()
        log.info(
            "listening on %s:%d (pid %d, %s event loop%s)",
            settings.host,
            settings.port,
            os.getpid(),
            type(loop).__module__.split(".", 1)[0],
            ", SO_REUSEPORT" if reuse_port else "",
        )
        await stop.wait()
        stop.clear()
        started = loop.time()
        start_draining(app)
        with contextlib.suppress(TimeoutError):  # the delay ran out: the usual case
            await asyncio.wait_for(stop.wait(), settings.shutdown_delay)
        # A planned stop is not a problem: INFO, so WARNING keeps meaning "look at this".
        log.info(
            "shutting down after %.1f s of draining: closing the listener, "
            "finishing requests in flight",
            loop.time() - started,
        )
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("stopped (pid %d)", os.getpid())
    return 0


def supervise(settings: Settings, workers: int) -> int:
    """Start `workers` worker processes on one port; forward signals; exit when they do."""
    from authserver.policy.loader import load_policy
    from authserver.policy.model import PolicyLoadError

    try:
        load_policy(settings.policy_file)  # refuse a broken policy once, not N times
    except PolicyLoadError as err:
        print("authserver: invalid policy:\n  - " + "\n  - ".join(err.problems), file=sys.stderr)
        return 2
    if settings.redis_url is None:
        log.warning(
            "%d workers without AUTHSERVER_REDIS_URL: each has its own token cache and its own "
            "share of nothing: every worker applies for its own tokens and counts the upstream "
            "quota alone, so together they can exceed it. Configure Redis for --workers.",
            workers,
        )
    command = [sys.executable, "-m", "authserver", "serve", WORKER_FLAG]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            signum = signal.SIGTERM
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        for _ in range(workers):
            if stopping:  # SIGTERM while starting: start no more
                break
            children.append(subprocess.Popen(command))  # noqa: S603 - our own interpreter
        if stopping:
            # A worker started after the signal was forwarded never got it: tell them all.
            forward(signal.SIGTERM, None)
        log.info(
            "supervisor %d started %d workers on %s:%d: pids %s",
            os.getpid(),
            workers,
            settings.host,
            settings.port,
            " ".join(str(c.pid) for c in children),
        )
        failed = _wait_all(children, lambda: stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _wait_all(children: list[subprocess.Popen[bytes]], stopping: Callable[[], bool]) -> bool:
    """Wait for every child; if one exits unasked, stop the rest. True when any failed."""
    failed = False
    deadline: float | None = None
    while any(c.poll() is None for c in children):
        for child in children:
            code = child.poll()
            if code is None or stopping() or deadline is not None:
                continue
            log.error("worker %d exited with %d; stopping the others", child.pid, code)
            failed = True
            deadline = time.monotonic() + SUPERVISOR_GRACE
            for other in children:
                if other.poll() is None:
                    other.terminate()
        if stopping() and deadline is None:
            deadline = time.monotonic() + SUPERVISOR_GRACE
        if deadline is not None and time.monotonic() > deadline:
            for child in children:
                if child.poll() is None:
                    log.error("worker %d did not stop in time; killing it", child.pid)
                    child.kill()
        time.sleep(0.1)  # the supervisor has no event loop: polling is its whole job
    for child in children:
        if child.returncode not in (0, -signal.SIGTERM):
            failed = True
    return failed
